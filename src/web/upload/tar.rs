//! A streaming tar reader: headers are parsed as they arrive and each file's bytes are
//! handed on in chunks, so an archive of any size passes through a fixed buffer.
//! Understands what `docker save` and OCI layouts write: ustar and GNU headers, GNU
//! long names, pax `path`/`linkpath`/`size` records, links.

use tokio::io::{AsyncRead, AsyncReadExt};

const BLOCK: usize = 512;
/// Pax and GNU long-name records larger than this are refused.
const MAX_META: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("not a tar archive (the first header's checksum is wrong)")]
    NotTar,
    #[error("the tar archive is damaged: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    /// A hard or symbolic link to another entry (docker save links repeated layers).
    Link(String),
    Other,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub size: u64,
    pub kind: Kind,
}

pub struct TarReader<R> {
    inner: R,
    /// Bytes of the current entry not yet read, and its padding.
    remaining: u64,
    padding: u64,
    headers_seen: u64,
}

fn field(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn number(bytes: &[u8]) -> Result<u64, TarError> {
    if bytes[0] & 0x80 != 0 {
        // GNU base-256: big-endian, the first byte's top bit set.
        let mut n: u64 = u64::from(bytes[0] & 0x7f);
        for b in &bytes[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(*b)))
                .ok_or_else(|| TarError::Corrupt("a size field overflows".into()))?;
        }
        return Ok(n);
    }
    let text = field(bytes);
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8)
        .map_err(|_| TarError::Corrupt(format!("a numeric field reads {text:?}")))
}

fn checksum_ok(block: &[u8]) -> bool {
    let Ok(stored) = number(&block[148..156]) else {
        return false;
    };
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    stored == sum
}

fn clean_path(path: &str) -> String {
    path.trim_start_matches("./")
        .trim_start_matches('/')
        .to_string()
}

impl<R: AsyncRead + Unpin> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            headers_seen: 0,
        }
    }

    /// Reads up to `buf.len()` bytes of the current entry; 0 at its end.
    pub async fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let n = self.inner.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(TarError::Corrupt("the archive ends inside a file".into()));
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    async fn skip(&mut self, mut n: u64) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = (n as usize).min(buf.len());
            self.inner
                .read_exact(&mut buf[..want])
                .await
                .map_err(eof_is_corrupt)?;
            n -= want as u64;
        }
        Ok(())
    }

    async fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        if size > MAX_META {
            return Err(TarError::Corrupt(format!("a {size}-byte metadata record")));
        }
        let mut data = vec![0u8; size as usize];
        self.inner
            .read_exact(&mut data)
            .await
            .map_err(eof_is_corrupt)?;
        self.skip(padding(size)).await?;
        Ok(data)
    }

    /// The next entry's header, after skipping what is left of the current one; `None`
    /// at the end of the archive.
    pub async fn next(&mut self) -> Result<Option<Entry>, TarError> {
        let rest = self.remaining + self.padding;
        self.remaining = 0;
        self.padding = 0;
        self.skip(rest).await?;
        let mut long_name: Option<String> = None;
        let mut long_link: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let mut block = [0u8; BLOCK];
            match self.inner.read_exact(&mut block).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return if self.headers_seen == 0 {
                        Err(TarError::NotTar)
                    } else {
                        Err(TarError::Corrupt(
                            "the archive ends without its end marker".into(),
                        ))
                    };
                }
                Err(e) => return Err(e.into()),
            }
            if block.iter().all(|b| *b == 0) {
                return if self.headers_seen == 0 {
                    Err(TarError::NotTar)
                } else {
                    Ok(None)
                };
            }
            if !checksum_ok(&block) {
                return Err(if self.headers_seen == 0 {
                    TarError::NotTar
                } else {
                    TarError::Corrupt("a header's checksum is wrong".into())
                });
            }
            self.headers_seen += 1;
            let size = number(&block[124..136])?;
            let typeflag = block[156];
            match typeflag {
                b'L' | b'K' => {
                    let data = self.read_meta(size).await?;
                    let text = field(&data);
                    if typeflag == b'L' {
                        long_name = Some(text);
                    } else {
                        long_link = Some(text);
                    }
                    continue;
                }
                b'x' => {
                    let data = self.read_meta(size).await?;
                    for (key, value) in pax_records(&data)? {
                        match key.as_str() {
                            "path" => long_name = Some(value),
                            "linkpath" => long_link = Some(value),
                            "size" => {
                                pax_size = Some(value.parse().map_err(|_| {
                                    TarError::Corrupt(format!("pax size {value:?}"))
                                })?)
                            }
                            _ => {}
                        }
                    }
                    continue;
                }
                b'g' => {
                    self.read_meta(size).await?;
                    continue;
                }
                _ => {}
            }
            let ustar = &block[257..262] == b"ustar";
            let mut name = field(&block[0..100]);
            if ustar && block[345] != 0 && &block[257..263] == b"ustar\0" {
                name = format!("{}/{}", field(&block[345..500]), name);
            }
            let path = clean_path(&long_name.take().unwrap_or(name));
            let size = pax_size.take().unwrap_or(size);
            let kind = match typeflag {
                b'0' | 0 | b'7' => Kind::File,
                b'1' | b'2' => {
                    Kind::Link(long_link.take().unwrap_or_else(|| field(&block[157..257])))
                }
                _ => Kind::Other,
            };
            // Links and directories carry no data, whatever their size field says.
            let data = if matches!(kind, Kind::File) || !matches!(typeflag, b'1' | b'2' | b'5') {
                size
            } else {
                0
            };
            self.remaining = data;
            self.padding = padding(data);
            return Ok(Some(Entry {
                path,
                size: data,
                kind,
            }));
        }
    }

    /// Reads what follows the end marker, so a gzip trailer (its checksum) is checked.
    pub async fn finish(mut self) -> Result<(), TarError> {
        let mut buf = [0u8; 8192];
        loop {
            if self.inner.read(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn eof_is_corrupt(e: std::io::Error) -> TarError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        TarError::Corrupt("the archive ends inside an entry".into())
    } else {
        TarError::Io(e)
    }
}

/// Pax records: `<length> <key>=<value>\n`, repeated.
fn pax_records(mut data: &[u8]) -> Result<Vec<(String, String)>, TarError> {
    let mut out = Vec::new();
    while !data.is_empty() && data[0] != 0 {
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or_else(|| TarError::Corrupt("a pax record has no length".into()))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|l| *l > space && *l <= data.len())
            .ok_or_else(|| TarError::Corrupt("a pax record's length is wrong".into()))?;
        let record = &data[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|b| *b == b'=') {
            out.push((
                String::from_utf8_lossy(&record[..eq]).into_owned(),
                String::from_utf8_lossy(&record[eq + 1..]).into_owned(),
            ));
        }
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: u64, typeflag: u8, link: &str) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        let s = format!("{size:011o}");
        h[124..135].copy_from_slice(s.as_bytes());
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in files {
            out.extend(header(name, data.len() as u64, b'0', ""));
            out.extend_from_slice(data);
            out.resize(out.len() + padding(data.len() as u64) as usize, 0);
        }
        out.extend(header("link.tar", 0, b'2', "a/layer.tar"));
        out.extend(vec![0u8; 2 * BLOCK]);
        out
    }

    #[tokio::test]
    async fn entries_and_their_bytes_come_out_in_order() {
        let tar = archive(&[("./a/layer.tar", b"hello"), ("manifest.json", &[b'x'; 700])]);
        let mut reader = TarReader::new(&tar[..]);
        let first = reader.next().await.unwrap().unwrap();
        assert_eq!(
            (first.path.as_str(), first.size, &first.kind),
            ("a/layer.tar", 5, &Kind::File)
        );
        let mut buf = [0u8; 3];
        let mut got = Vec::new();
        loop {
            let n = reader.read_data(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"hello");
        // The second entry's data is skipped when not read.
        let second = reader.next().await.unwrap().unwrap();
        assert_eq!((second.path.as_str(), second.size), ("manifest.json", 700));
        let link = reader.next().await.unwrap().unwrap();
        assert_eq!(link.kind, Kind::Link("a/layer.tar".into()));
        assert!(reader.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn garbage_is_not_a_tar_and_a_cut_archive_is_corrupt() {
        let garbage = vec![7u8; 4096];
        assert!(matches!(
            TarReader::new(&garbage[..]).next().await,
            Err(TarError::NotTar)
        ));
        let tar = archive(&[("a", &[1u8; 2000])]);
        let mut reader = TarReader::new(&tar[..1000]);
        reader.next().await.unwrap();
        assert!(matches!(reader.next().await, Err(TarError::Corrupt(_))));
    }
}
