//! The journal segment being appended to: one file of batches after a
//! header, kept preallocated with zeros under `--fsync always`.

use std::path::PathBuf;

use super::super::file_system::WritableFile;
use super::super::files::{self, DataDir};
use super::FsyncPolicy;

/// The segment being appended to.
///
/// Under `--fsync always` a segment is kept *preallocated*: its file is
/// extended with zeros ahead of the records, `preallocate_bytes` at a time
/// (`Storage::Durable::journal_preallocate_bytes`), so that a commit writes
/// over zeros already on disk and its `fdatasync` has no new file size (a
/// metadata commit) to make durable, only the data. Reading takes zeros
/// after the last valid batch as the end of the records (see
/// `recovery::read_segment`).
pub struct Segment {
    pub(super) file: Box<dyn WritableFile>,
    pub(super) path: PathBuf,
    pub(super) first_sequence: u64,
    /// Where the records end: the next batch is written here.
    pub(super) size_bytes: u64,
    /// The file's length: zeros from `size_bytes` up to it.
    pub(super) file_bytes: u64,
    /// How far ahead of the records the file is extended; 0 for never.
    pub(super) preallocate_bytes: u64,
    /// Set when extending this segment failed for lack of room: it goes on
    /// without preallocation (the next segment tries again).
    pub(super) preallocation_failed: bool,
    /// The checksum seed of its frames, from its salt.
    pub(super) seed: u32,
}

/// Where an existing segment's records end, as recovery found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEnd {
    /// The segment.
    pub path: PathBuf,
    /// Its first sequence.
    pub first_sequence: u64,
    /// Where its records end (once a torn tail is cut).
    pub valid_bytes: u64,
    /// Its file's length once cut: zeros from `valid_bytes` on.
    pub file_bytes: u64,
    /// The checksum seed of its frames.
    pub seed: u32,
}

/// Whether `error` says there is no room for more bytes: the disk is full,
/// a quota is reached, or the process's file size limit.
fn is_out_of_room(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG))
}

/// A block of zeros to extend segments with, written in pieces of this size
/// so that preallocating never needs a buffer as large as the extension.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

impl Segment {
    /// Creates a new, empty segment whose first record will be `first_sequence`,
    /// durable (file, preallocated zeros and directory entry) before it is
    /// used. A segment that cannot be completed is removed again, so no
    /// partial file is left.
    pub fn create(
        data_dir: &DataDir,
        first_sequence: u64,
        preallocate_bytes: u64,
    ) -> std::io::Result<Self> {
        let path = data_dir.journal_path(first_sequence);
        let file = data_dir.fs().create_new(&path)?;
        let salt = data_dir.fs().new_salt();
        let mut header = files::encode_header(
            files::JOURNAL_MAGIC,
            files::JOURNAL_FORMAT_VERSION,
            first_sequence,
        )
        .to_vec();
        header.extend_from_slice(&files::encode_journal_salt(salt));
        let mut segment = Self {
            file,
            path,
            first_sequence,
            size_bytes: 0,
            file_bytes: 0,
            preallocate_bytes,
            preallocation_failed: false,
            seed: files::frame_seed(salt),
        };
        let written = segment
            .write_unsynced(&header)
            .and_then(|()| segment.file.sync())
            .and_then(|()| data_dir.sync());
        if let Err(error) = written {
            let path = segment.path;
            drop(segment.file);
            if let Err(remove_error) = data_dir.fs().remove_file(&path) {
                tracing::warn!(path = %path.display(), %remove_error, "cannot remove a partial journal segment; start-up will");
            }
            return Err(error);
        }
        debug_assert_eq!(segment.size_bytes, files::JOURNAL_HEADER_BYTES as u64);
        Ok(segment)
    }

    /// Opens an existing segment, already checked, to append after its last
    /// record: its records end at `end.valid_bytes`, and the file,
    /// `end.file_bytes` long, holds only zeros after them.
    pub fn open_existing(
        data_dir: &DataDir,
        end: &SegmentEnd,
        preallocate_bytes: u64,
    ) -> std::io::Result<Self> {
        assert!(end.valid_bytes <= end.file_bytes, "records cannot end past the file");
        let file = data_dir.fs().open_append(&end.path)?;
        Ok(Self {
            file,
            path: end.path.clone(),
            first_sequence: end.first_sequence,
            size_bytes: end.valid_bytes,
            file_bytes: end.file_bytes,
            preallocate_bytes,
            preallocation_failed: false,
            seed: end.seed,
        })
    }

    pub(super) fn write(&mut self, bytes: &[u8], fsync: FsyncPolicy) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.write_unsynced(bytes)?;
        if fsync == FsyncPolicy::Always {
            self.sync()?;
        }
        metrics::counter!("points_journal_bytes_total").increment(bytes.len() as u64);
        metrics::gauge!("points_journal_segment_bytes").set(self.size_bytes as f64);
        Ok(())
    }

    /// Writes `bytes` after the records, first extending the file with zeros
    /// if they would not fit in it (and preallocation is on).
    ///
    /// Preallocation only makes syncs cheaper, so running out of room for
    /// it (a disk, quota or file size limit nearly reached) is no reason to
    /// refuse records that still fit: this segment goes on without it, and
    /// the next one tries again. Any other error fails the journal, as a
    /// failed record write would.
    fn write_unsynced(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let end = self.size_bytes + bytes.len() as u64;
        // The records before the zeros, so that a failed call never leaves
        // a new segment without its header (a crash may still keep the
        // zeros and not the header, before the sync: that file is all
        // zeros, and reads as a segment whose header was never written).
        self.file.write_at(self.size_bytes, bytes)?;
        self.size_bytes = end;
        self.file_bytes = self.file_bytes.max(end);
        if end == self.file_bytes && self.preallocate_bytes > 0 && !self.preallocation_failed {
            let target = (end / self.preallocate_bytes + 1) * self.preallocate_bytes;
            match self.extend_with_zeros(target) {
                Ok(()) => {}
                Err(error) if is_out_of_room(&error) => {
                    tracing::warn!(
                        path = %self.path.display(),
                        %error,
                        "cannot preallocate the journal segment (is the disk nearly full?); \
                         writing it without preallocation, so each commit also syncs its size"
                    );
                    self.preallocation_failed = true;
                }
                Err(error) => return Err(error),
            }
        }
        debug_assert!(self.size_bytes <= self.file_bytes);
        Ok(())
    }

    /// Extends the file, which ends with the records, with zeros to
    /// `target_bytes`. On failure, `file_bytes` covers the pieces written;
    /// whatever a failed piece left past it is zeros too, so reading still
    /// finds the records' end.
    fn extend_with_zeros(&mut self, target_bytes: u64) -> std::io::Result<()> {
        debug_assert_eq!(self.file_bytes, self.size_bytes);
        let mut offset = self.file_bytes;
        // Each turn writes at least one byte, so this ends within
        // `preallocate_bytes` bytes.
        while offset < target_bytes {
            let length = (target_bytes - offset).min(ZEROS.len() as u64);
            self.file.write_at(offset, &ZEROS[..length as usize])?;
            offset += length;
            self.file_bytes = self.file_bytes.max(offset);
        }
        Ok(())
    }

    pub(super) fn sync(&mut self) -> std::io::Result<()> {
        let started = std::time::Instant::now();
        self.file.sync()?;
        metrics::histogram!("points_journal_fsync_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A file in memory that takes bytes only below `limit_bytes`: a write
    /// past it writes what fits, then fails with the OS error `error`, as a
    /// real `write` at a full disk does.
    struct LimitedFile {
        data: std::sync::Arc<Mutex<Vec<u8>>>,
        limit_bytes: usize,
        error: i32,
    }

    impl WritableFile for LimitedFile {
        fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            let length = self.data.lock().expect("not poisoned").len();
            self.write_at(length as u64, bytes)
        }

        fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
            let mut data = self.data.lock().expect("not poisoned");
            let offset = offset as usize;
            let fits = self.limit_bytes.saturating_sub(offset).min(bytes.len());
            if data.len() < offset + fits {
                data.resize(offset + fits, 0);
            }
            data[offset..offset + fits].copy_from_slice(&bytes[..fits]);
            if fits < bytes.len() {
                return Err(std::io::Error::from_raw_os_error(self.error));
            }
            Ok(())
        }

        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }

        fn truncate(&mut self, length_bytes: u64) -> std::io::Result<()> {
            self.data.lock().expect("not poisoned").resize(length_bytes as usize, 0);
            Ok(())
        }
    }

    /// A segment over a [`LimitedFile`], and the file's bytes.
    fn limited_segment(
        limit_bytes: usize,
        error: i32,
        preallocate_bytes: u64,
    ) -> (Segment, std::sync::Arc<Mutex<Vec<u8>>>) {
        let data = std::sync::Arc::default();
        let file = LimitedFile { data: std::sync::Arc::clone(&data), limit_bytes, error };
        let segment = Segment {
            file: Box::new(file),
            path: PathBuf::from("journal-test.log"),
            first_sequence: 1,
            size_bytes: 0,
            file_bytes: 0,
            preallocate_bytes,
            preallocation_failed: false,
            seed: 0,
        };
        (segment, data)
    }

    /// The file grows by whole preallocation steps, written as zeros in
    /// several pieces, and records go over the zeros right after each other.
    #[test]
    fn a_preallocated_segment_grows_in_steps_of_zeros_after_its_records() {
        let (mut segment, data) = limited_segment(usize::MAX, libc::ENOSPC, 200_000);
        segment.write_unsynced(&[7; 100]).expect("room");
        assert_eq!((segment.size_bytes, segment.file_bytes), (100, 200_000));
        {
            let data = data.lock().expect("not poisoned");
            assert_eq!(data.len(), 200_000);
            assert!(data[..100].iter().all(|&byte| byte == 7));
            assert!(data[100..].iter().all(|&byte| byte == 0));
        }
        segment.write_unsynced(&[8; 1_000]).expect("room");
        assert_eq!((segment.size_bytes, segment.file_bytes), (1_100, 200_000), "within the zeros");
        segment.write_unsynced(&[9; 199_000]).expect("room");
        assert_eq!((segment.size_bytes, segment.file_bytes), (200_100, 400_000));
        let data = data.lock().expect("not poisoned");
        assert_eq!(data.len(), 400_000);
        assert!(data[1_100..200_100].iter().all(|&byte| byte == 9));
        assert!(data[200_100..].iter().all(|&byte| byte == 0));
    }

    /// Out of room for the zeros (ENOSPC, EDQUOT or EFBIG), the segment
    /// keeps the pieces it wrote and takes the records that still fit,
    /// without trying to preallocate again.
    #[test]
    fn a_segment_out_of_room_for_its_zeros_keeps_taking_the_records_that_fit() {
        for error in [libc::ENOSPC, libc::EDQUOT, libc::EFBIG] {
            let (mut segment, data) = limited_segment(150_000, error, 1 << 20);
            segment.write_unsynced(&[7; 100]).expect("the records fit");
            assert!(segment.preallocation_failed);
            // Two whole 64 KiB pieces landed after the records; the third in part.
            let whole_pieces = 100 + 2 * ZEROS.len() as u64;
            assert_eq!((segment.size_bytes, segment.file_bytes), (100, whole_pieces));
            assert_eq!(data.lock().expect("not poisoned").len(), 150_000);
            segment.write_unsynced(&[8; 149_000]).expect("the records fit");
            assert_eq!(segment.size_bytes, 149_100);
            assert_eq!(data.lock().expect("not poisoned").len(), 150_000, "no zeros tried");
            let refused = segment.write_unsynced(&[9; 1_000]).expect_err("past the limit");
            assert_eq!(refused.raw_os_error(), Some(error));
        }
    }

    /// Any other error while writing the zeros fails the write, as a failed
    /// record write does: the journal fails stop.
    #[test]
    fn an_io_error_while_preallocating_fails_the_write() {
        let (mut segment, _data) = limited_segment(1_000, libc::EIO, 1 << 20);
        let failed = segment.write_unsynced(&[7; 100]).expect_err("EIO is not a full disk");
        assert_eq!(failed.raw_os_error(), Some(libc::EIO));
    }
}
