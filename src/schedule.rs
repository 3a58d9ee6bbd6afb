//! Cron schedules (five fields, UTC) for the work berth does on its own: garbage
//! collection, aging rules.

use jiff::Timestamp;

#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not a cron schedule of five fields (minute hour day month weekday): {reason}")]
pub struct ScheduleError {
    text: String,
    reason: String,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    cron: croner::Cron,
    text: String,
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let error = |reason: String| ScheduleError {
            text: text.to_string(),
            reason,
        };
        if text.split_whitespace().count() != 5 {
            return Err(error("it needs exactly five fields".into()));
        }
        let cron = croner::Cron::new(text)
            .with_dom_and_dow()
            .parse()
            .map_err(|e| error(e.to_string()))?;
        Ok(Schedule {
            cron,
            text: text.to_string(),
        })
    }

    /// The first time the schedule fires strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = chrono::DateTime::from_timestamp(after.as_second(), 0)?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Timestamp::from_second(next.timestamp()).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::str::FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
