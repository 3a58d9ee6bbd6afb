//! Cron schedules for the work berth does on its own (garbage collection, AgingRules,
//! SyncRules): five fields (minute hour day-of-month month day-of-week, UTC), with `*`,
//! numbers, ranges `a-b`, lists `a,b` and steps `*/n`.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    text: String,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Whether day-of-month and day-of-week were both restricted (then either matches).
    day_or: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule {text:?}: {problem}")]
pub struct ScheduleError {
    text: String,
    problem: String,
}

fn field(text: &str, min: u32, max: u32, name: &str) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let restricted = text != "*";
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("{name}: step {s:?} is not a positive number"))?,
            ),
            None => (part, 1),
        };
        let number = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("{name}: {s:?} is not a number from {min} to {max}"))
        };
        let (lo, hi) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (number(a)?, number(b)?),
                None if step > 1 => (number(r)?, max),
                None => {
                    let n = number(r)?;
                    (n, n)
                }
            },
        };
        if lo > hi {
            return Err(format!("{name}: range {range:?} is backwards"));
        }
        let mut n = lo;
        while n <= hi {
            bits |= 1 << n;
            n += step;
        }
    }
    Ok((bits, restricted))
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let error = |problem: String| ScheduleError {
            text: text.into(),
            problem,
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [m, h, dom, mon, dow] = fields[..] else {
            return Err(error(format!("{} fields, not 5", fields.len())));
        };
        let (minutes, _) = field(m, 0, 59, "minute").map_err(error)?;
        let (hours, _) = field(h, 0, 23, "hour").map_err(error)?;
        let (days, dom_restricted) = field(dom, 1, 31, "day of month").map_err(error)?;
        let (months, _) = field(mon, 1, 12, "month").map_err(error)?;
        let (mut weekdays, dow_restricted) = field(dow, 0, 7, "day of week").map_err(error)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Schedule {
            text: text.into(),
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: (weekdays & 0x7f) as u8,
            day_or: dom_restricted && dow_restricted,
        })
    }

    fn matches(&self, t: DateTime) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().to_sunday_zero_offset()) != 0;
        let day = if self.day_or { dom || dow } else { dom && dow };
        self.minutes & (1 << t.minute()) != 0
            && self.hours & (1 << t.hour()) != 0
            && self.months & (1 << t.month()) != 0
            && day
    }

    /// The first minute strictly after `after` that the schedule names (within 5 years).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let utc = TimeZone::UTC;
        let start = after.to_zoned(utc.clone()).datetime();
        let mut t = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(jiff::Span::new().minutes(1))
            .ok()?;
        for _ in 0..(5 * 366 * 24 * 60) {
            if self.matches(t) {
                return t.to_zoned(utc).ok().map(|z| z.timestamp());
            }
            // Skip a whole hour or day when it cannot match.
            let step = if self.hours & (1 << t.hour()) == 0 || !self.day_matches(t) {
                jiff::Span::new().minutes(60 - i64::from(t.minute()))
            } else {
                jiff::Span::new().minutes(1)
            };
            t = t.checked_add(step).ok()?;
        }
        None
    }

    fn day_matches(&self, t: DateTime) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().to_sunday_zero_offset()) != 0;
        let day = if self.day_or { dom || dow } else { dom && dow };
        day && self.months & (1 << t.month()) != 0
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(schedule: &str, after: &str) -> String {
        Schedule::parse(schedule)
            .unwrap()
            .next_after(after.parse().unwrap())
            .unwrap()
            .to_string()
    }

    #[test]
    fn daily_hourly_and_stepped_schedules() {
        assert_eq!(
            next("30 2 * * *", "2026-01-01T03:00:00Z"),
            "2026-01-02T02:30:00Z"
        );
        assert_eq!(
            next("30 2 * * *", "2026-01-01T02:29:59Z"),
            "2026-01-01T02:30:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T10:14:00Z"),
            "2026-01-01T10:15:00Z"
        );
        assert_eq!(
            next("0 0 1 * *", "2026-01-15T00:00:00Z"),
            "2026-02-01T00:00:00Z"
        );
        // 2026-01-04 is a Sunday; 7 means Sunday too.
        assert_eq!(
            next("0 9 * * 7", "2026-01-01T00:00:00Z"),
            "2026-01-04T09:00:00Z"
        );
        assert_eq!(
            next("0 9 * * 1-5", "2026-01-03T00:00:00Z"),
            "2026-01-05T09:00:00Z"
        );
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        for bad in [
            "* * * *",
            "60 * * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn daily_and_hourly_schedules_fire_when_cron_says() {
        let t: Timestamp = "2026-12-04T05:10:00Z".parse().unwrap();
        let daily = Schedule::parse("0 3 * * *").unwrap();
        assert_eq!(
            daily.next_after(t).unwrap().to_string(),
            "2026-12-05T03:00:00Z"
        );
        let every_15 = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(
            every_15.next_after(t).unwrap().to_string(),
            "2026-12-04T05:15:00Z"
        );
    }

    #[test]
    fn schedules_that_are_not_five_valid_fields_are_refused() {
        for bad in ["", "0 3 * *", "0 0 3 * * *", "61 * * * *", "x * * * *"] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?}");
        }
    }
}
