//! The push log: how replicas sharing a bucket tell the leader about the pushes they
//! took, without a message broker. Each push is one small object, written create-only
//! under `events/`, named by its time so a listing that starts after a name returns
//! what came later (S3's `start-after`). The leader tails it (see `crate::replicas`)
//! and prunes what is older than its retention.

use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use object_store::path::Path;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::Store;
use super::error::{Result, StorageError};
use super::layout::{Key, parse_push_record, push_record_time};

/// Deletes run this many at once when pruning.
const PRUNE_CONCURRENCY: usize = 16;

/// One push, as another replica reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushRecord {
    pub repository: String,
    pub digest: String,
    pub tags: Vec<String>,
    /// When the manifest was committed (RFC 3339).
    pub pushed_at: String,
}

/// A record's name in the log, and what the name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedRecord {
    /// `<micros>-<writer>-<seq>`: unique, and ordered by time.
    pub name: String,
    pub micros: i64,
    pub writer: String,
}

impl Store {
    /// Appends `record` as push number `seq` of `writer` (a name unique to this process).
    pub async fn append_push_record(
        &self,
        writer: &str,
        seq: u64,
        record: &PushRecord,
    ) -> Result<String> {
        let micros = Timestamp::now().as_microsecond();
        let key = Key::PushRecord(micros, writer, seq).path();
        let data = serde_json::to_vec(record).expect("push records always serialize");
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.objects
            .put_opts(&key, PutPayload::from(data), options)
            .await
            .map_err(|e| StorageError::backend("append", &key, e))?;
        Ok(key.filename().unwrap_or_default().to_string())
    }

    /// The records written at or after `since_micros`, oldest first: one listing that
    /// starts after the names of earlier times.
    pub async fn push_records_since(&self, since_micros: i64) -> Result<Vec<ListedRecord>> {
        let prefix = Key::PushRecords.path();
        // Every name of that time or later sorts after "<time - 1>-~".
        let offset = Path::from(format!(
            "{}/{}-~",
            prefix.as_ref(),
            push_record_time(since_micros.saturating_sub(1))
        ));
        let mut found: Vec<ListedRecord> = self
            .objects
            .list_with_offset(Some(&prefix), &offset)
            .map_ok(|meta| meta.location.filename().unwrap_or_default().to_string())
            .try_collect::<Vec<String>>()
            .await
            .map_err(|e| StorageError::backend("list", &prefix, e))?
            .into_iter()
            .filter_map(|name| {
                let (micros, writer) = parse_push_record(&name)?;
                let writer = writer.to_string();
                (micros >= since_micros).then_some(ListedRecord {
                    name,
                    micros,
                    writer,
                })
            })
            .collect();
        // S3 lists in key order; a local folder in no particular order.
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// Reads one record; `None` if it was pruned meanwhile.
    pub async fn read_push_record(&self, name: &str) -> Result<Option<PushRecord>> {
        let key = Path::from(format!("{}/{name}", Key::PushRecords.path()));
        self.get_json(&key).await
    }

    /// Deletes the records written before `before_micros`; returns how many.
    pub async fn prune_push_records(&self, before_micros: i64) -> Result<u64> {
        let prefix = Key::PushRecords.path();
        let old: Vec<Path> = self
            .objects
            .list(Some(&prefix))
            .try_filter_map(|meta| async move {
                let name = meta.location.filename().unwrap_or_default();
                let old = parse_push_record(name).is_none_or(|(micros, _)| micros < before_micros);
                Ok(old.then_some(meta.location))
            })
            .try_collect()
            .await
            .map_err(|e| StorageError::backend("list", &prefix, e))?;
        let count = old.len() as u64;
        stream::iter(old)
            .map(|key| async move {
                match self.os_delete(&key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(StorageError::backend("delete", &key, e)),
                }
            })
            .buffer_unordered(PRUNE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(tag: &str) -> PushRecord {
        PushRecord {
            repository: "team/app".into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            tags: vec![tag.into()],
            pushed_at: Timestamp::now().to_string(),
        }
    }

    #[tokio::test]
    async fn records_list_in_order_from_a_time_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&super::super::StorageLocation::Local(dir.path().into())).unwrap();
        let first = store
            .append_push_record("w1", 0, &record("v1"))
            .await
            .unwrap();
        let (first_micros, _) = parse_push_record(&first).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let second = store
            .append_push_record("w2", 0, &record("v2"))
            .await
            .unwrap();
        let (second_micros, _) = parse_push_record(&second).unwrap();

        let all = store.push_records_since(first_micros).await.unwrap();
        let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, [first.as_str(), second.as_str()]);
        assert_eq!(all[1].writer, "w2");
        let later = store.push_records_since(second_micros).await.unwrap();
        assert_eq!(later.len(), 1);
        let read = store.read_push_record(&second).await.unwrap().unwrap();
        assert_eq!(read.tags, ["v2"]);

        assert_eq!(store.prune_push_records(second_micros).await.unwrap(), 1);
        let left = store.push_records_since(0).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].name, second);
    }
}
