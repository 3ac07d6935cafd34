//! Blobs written into the store as they arrive: counted against the size
//! they may have, hashed on the way to a private temporary file, and made
//! visible under their digest only by a rename once both the size and the
//! digest match. A reader never sees a partial or unverified blob, and a
//! refused one leaves nothing behind. Registry pulls, uploads to the
//! control plane and a node's fetches all go through [`BlobWriter`].

use super::Digest;
use super::store::StoreError;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// The largest blob Skiff stores from the network (512 MiB): a registry
/// layer, an upload to the control plane, or a node's fetch.
pub const MAX_BLOB_SIZE: u64 = 512 << 20;

/// The largest image manifest Skiff takes from the network: 4 MiB, the size
/// the OCI distribution spec asks registries to accept.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// How many bytes a blob may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobSize {
    /// Exactly this many, as a descriptor or `Content-Length` declares.
    Exactly(u64),
    /// Any number up to this many, when nothing declares the size.
    AtMost(u64),
}

impl BlobSize {
    fn limit(self) -> u64 {
        match self {
            BlobSize::Exactly(n) | BlobSize::AtMost(n) => n,
        }
    }
}

/// One blob on its way into the store. Dropping it unfinished discards
/// what was written.
pub struct BlobWriter {
    digest: Digest,
    size: BlobSize,
    target: PathBuf,
    file: std::io::BufWriter<tempfile::NamedTempFile>,
    hasher: Sha256,
    written: u64,
}

impl BlobWriter {
    /// A writer of blob `digest` into a temporary file in `incoming`,
    /// renamed to `target` when finished.
    pub(super) fn new(
        digest: &Digest,
        size: BlobSize,
        target: PathBuf,
        incoming: &std::path::Path,
    ) -> Result<BlobWriter, StoreError> {
        let file = tempfile::NamedTempFile::new_in(incoming).map_err(|source| StoreError::Io {
            path: incoming.to_path_buf(),
            source,
        })?;
        Ok(BlobWriter {
            digest: digest.clone(),
            size,
            target,
            file: std::io::BufWriter::with_capacity(256 << 10, file),
            hasher: Sha256::new(),
            written: 0,
        })
    }

    /// The blob being written.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends `bytes`.
    ///
    /// # Errors
    ///
    /// [`StoreError::TooLarge`] when they go past the size the blob may
    /// have (nothing past it is written), or I/O errors.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let limit = self.size.limit();
        if self.written.saturating_add(bytes.len() as u64) > limit {
            return Err(StoreError::TooLarge {
                digest: self.digest.clone(),
                limit,
                declared: matches!(self.size, BlobSize::Exactly(_)),
            });
        }
        self.hasher.update(bytes);
        self.file
            .write_all(bytes)
            .map_err(|source| StoreError::Io {
                path: self.file.get_ref().path().to_path_buf(),
                source,
            })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Checks the size and digest, then makes the blob visible under its
    /// digest with one rename.
    ///
    /// # Errors
    ///
    /// [`StoreError::Truncated`] when fewer bytes came than declared,
    /// [`StoreError::Corrupt`] when they hash to another digest, or I/O
    /// errors; the store is unchanged.
    pub fn finish(self) -> Result<(), StoreError> {
        if let BlobSize::Exactly(declared) = self.size
            && self.written != declared
        {
            return Err(StoreError::Truncated {
                digest: self.digest,
                declared,
                received: self.written,
            });
        }
        let actual = Digest::from_hasher(self.hasher);
        if actual != self.digest {
            return Err(StoreError::Corrupt {
                digest: self.digest,
                actual,
            });
        }
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        let file = self.file.into_inner().map_err(|e| StoreError::Io {
            path: self.target.clone(),
            source: e.into_error(),
        })?;
        file.as_file().sync_all().map_err(io(file.path()))?;
        file.persist(&self.target).map_err(|e| StoreError::Io {
            path: self.target.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Writes everything `stream` yields, then [finishes](Self::finish);
    /// returns the bytes written. Gives up when no data comes for `idle`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Transfer`] when the stream fails or stalls, or as
    /// [`BlobWriter::write`] and [`BlobWriter::finish`]; the store is
    /// unchanged.
    pub async fn receive<S, B, E>(mut self, stream: S, idle: Duration) -> Result<u64, StoreError>
    where
        S: Stream<Item = Result<B, E>>,
        B: AsRef<[u8]>,
        E: std::fmt::Display,
    {
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::time::timeout(idle, stream.next()).await;
            match next {
                Err(_) => {
                    return Err(StoreError::Transfer {
                        digest: self.digest,
                        reason: format!("no data for {idle:?} after {} bytes", self.written),
                    });
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(StoreError::Transfer {
                        digest: self.digest,
                        reason: e.to_string(),
                    });
                }
                Ok(Some(Ok(chunk))) => self.write(chunk.as_ref())?,
            }
        }
        let written = self.written;
        let digest = self.digest.clone();
        tokio::task::spawn_blocking(move || self.finish())
            .await
            .map_err(|e| StoreError::Transfer {
                digest,
                reason: format!("the write task failed: {e}"),
            })??;
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::Store;

    fn chunks(parts: &[&'static str]) -> impl Stream<Item = Result<&'static [u8], String>> {
        futures::stream::iter(parts.iter().map(|p| Ok(p.as_bytes())).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn a_blob_is_stored_only_with_its_declared_size_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::of(b"hello world");
        let idle = Duration::from_secs(5);

        // More bytes than declared: refused as they arrive.
        let writer = store.writer(&digest, BlobSize::Exactly(5)).unwrap();
        let err = writer
            .receive(chunks(&["hello", " world"]), idle)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("declares"), "{err}");

        // Fewer bytes than declared.
        let writer = store.writer(&digest, BlobSize::Exactly(20)).unwrap();
        let err = writer
            .receive(chunks(&["hello", " world"]), idle)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Truncated { .. }), "{err}");

        // The right size, the wrong bytes.
        let writer = store.writer(&digest, BlobSize::Exactly(11)).unwrap();
        let err = writer
            .receive(chunks(&["hello", " wOrld"]), idle)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

        // Over a limit with no declared size.
        let writer = store.writer(&digest, BlobSize::AtMost(4)).unwrap();
        let err = writer
            .receive(chunks(&["hello", " world"]), idle)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");

        // None of that left anything behind.
        assert!(!store.blob_path(&digest).exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("incoming"))
                .unwrap()
                .count(),
            0
        );

        let writer = store.writer(&digest, BlobSize::Exactly(11)).unwrap();
        let written = writer
            .receive(chunks(&["hello", " world"]), idle)
            .await
            .unwrap();
        assert_eq!(written, 11);
        assert_eq!(store.read(&digest).unwrap(), b"hello world");
    }

    #[tokio::test]
    async fn a_stalled_stream_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::of(b"never");
        let writer = store.writer(&digest, BlobSize::AtMost(100)).unwrap();
        let stalled = futures::stream::pending::<Result<&[u8], String>>();
        let err = writer
            .receive(stalled, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Transfer { .. }), "{err}");
        assert!(!store.blob_path(&digest).exists());
    }
}
