//! How large each part of an in-place session's S3 multipart upload is.
//!
//! S3 takes at most 10,000 parts per upload, each at most 5 GiB and (but the last) at
//! least 5 MiB. Parts of one fixed size either waste memory on small blobs or stop large
//! ones early: 8 MiB parts end a blob at 78 GiB. Part sizes therefore double every
//! [`PartSchedule::doubling_every`] parts, from 8 MiB up to 4 GiB: 10,000 parts then
//! hold about 8 TiB, above S3's own limit of 5 TiB per object.
//!
//! Parts up to [`PartSchedule::in_memory`] are gathered in memory. Larger ones are
//! streamed from the request body straight into S3 (`s3_parts.rs`), which needs their
//! length before the first byte: a request whose `Content-Length` covers the part
//! streams it as it arrives; a body of unknown length (chunked transfer encoding, as
//! docker sends a layer) gathers it on local disk first (`part_spool.rs`).
//!
//! A request ends its last part, so a client that sends a blob in many small requests
//! gets parts no larger than its requests: 10,000 requests of 5 MiB make 50 GB.

use std::fmt;
use std::str::FromStr;

/// The most parts S3 accepts in one multipart upload.
pub const MAX_PARTS: usize = 10_000;

/// The largest part S3 accepts.
const MAX_PART: usize = 5 << 30;

/// The smallest part S3 accepts but for the last one.
pub const MIN_PART: usize = 5 << 20;

/// The largest part gathered in memory (what the upload budget reserves for).
pub const IN_MEMORY_PART: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartSchedule {
    /// The size of the first parts.
    pub first: usize,
    /// Part sizes double after this many parts.
    pub doubling_every: usize,
    /// The size parts stop growing at.
    pub largest: usize,
    /// Parts up to this size are gathered in memory; larger ones are streamed.
    pub in_memory: usize,
}

impl Default for PartSchedule {
    fn default() -> Self {
        PartSchedule {
            first: 8 << 20,
            doubling_every: 1000,
            largest: 4 << 30,
            in_memory: IN_MEMORY_PART,
        }
    }
}

impl PartSchedule {
    /// The size of part `index` (0-based) when the body's length allows it.
    pub fn size(&self, index: usize) -> usize {
        let doublings = (index / self.doubling_every).min(usize::BITS as usize - 1) as u32;
        self.first
            .checked_shl(doublings)
            .filter(|size| size >> doublings == self.first)
            .map_or(self.largest, |size| size.min(self.largest))
    }

    /// The size of part `index` when its bytes must be gathered in memory.
    pub fn size_in_memory(&self, index: usize) -> usize {
        self.size(index).min(self.in_memory)
    }

    /// The largest blob one upload holds when every part is as large as it may be.
    pub fn capacity(&self) -> u64 {
        (0..MAX_PARTS).map(|i| self.size(i) as u64).sum()
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "part schedule {0:?} is not FIRST,DOUBLING_EVERY,LARGEST,IN_MEMORY with sizes between 5 MiB and 5 GiB, IN_MEMORY at most 16 MiB (e.g. 8MiB,1000,4GiB,16MiB)"
)]
pub struct PartScheduleError(String);

impl FromStr for PartSchedule {
    type Err = PartScheduleError;

    /// `FIRST,DOUBLING_EVERY,LARGEST,IN_MEMORY`, sizes in bytes or with a KiB, MiB or
    /// GiB suffix.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || PartScheduleError(text.to_string());
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let [first, every, largest, in_memory] = fields[..] else {
            return Err(bad());
        };
        let size = |s: &str| crate::byte_size::parse_bytes(s).map_err(|_| bad());
        let schedule = PartSchedule {
            first: size(first)?,
            doubling_every: every.parse().map_err(|_| bad())?,
            largest: size(largest)?,
            in_memory: size(in_memory)?,
        };
        let in_range = |s: usize| (MIN_PART..=MAX_PART).contains(&s);
        if schedule.doubling_every == 0
            || !in_range(schedule.first)
            || !in_range(schedule.largest)
            || !(MIN_PART..=IN_MEMORY_PART).contains(&schedule.in_memory)
            || schedule.largest < schedule.first
        {
            return Err(bad());
        }
        Ok(schedule)
    }
}

impl fmt::Display for PartSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{},{},{},{}",
            self.first, self.doubling_every, self.largest, self.in_memory
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn parts_double_every_thousand_from_8_mib_and_stop_at_4_gib() {
        let s = PartSchedule::default();
        assert_eq!(s.size(0), 8 * MIB);
        assert_eq!(s.size(999), 8 * MIB);
        assert_eq!(s.size(1000), 16 * MIB);
        assert_eq!(s.size(9999), 4096 * MIB);
        assert_eq!(s.size(usize::MAX), 4096 * MIB);
        assert_eq!(s.size_in_memory(9999), 16 * MIB);
    }

    #[test]
    fn one_upload_holds_more_than_s3s_5_tib_object_limit() {
        let s = PartSchedule::default();
        assert!(s.capacity() > 5 * 1024 * GIB, "{}", s.capacity());
        // Gathered in memory: the first 2,000 parts (24 GB); on disk after that.
        assert_eq!(s.size(1999), s.in_memory);
        assert!(s.size(2000) > s.in_memory);
    }

    #[test]
    fn schedules_parse_with_size_suffixes_and_refuse_parts_s3_would_refuse() {
        let s: PartSchedule = "5MiB,2,40MiB,5MiB".parse().unwrap();
        assert_eq!(
            (0..8).map(|i| s.size(i) / MIB).collect::<Vec<_>>(),
            [5, 5, 10, 10, 20, 20, 40, 40]
        );
        assert_eq!(s.to_string().parse::<PartSchedule>().unwrap(), s);
        for bad in [
            "1MiB,2,40MiB,5MiB",
            "5MiB,0,40MiB,5MiB",
            "5MiB,2,6GiB,5MiB",
            "5MiB,2,40MiB,32MiB",
            "5MiB,2",
        ] {
            assert!(bad.parse::<PartSchedule>().is_err(), "{bad}");
        }
    }
}
