//! A tantivy [`Directory`] that keeps every file encrypted on disk (spec/at-rest.md): a copy of
//! the index directory reveals no indexed word.
//!
//! Each file is chunked AEAD: a header (magic, a random 16-byte file ID, the plaintext length),
//! then 64 KiB plaintext chunks, each XChaCha20-Poly1305 ciphertext + tag at a fixed offset.
//! The file's key is derived from the server key and the file ID, so every file (and every
//! rewrite of `meta.json`) has its own key and the chunk index can be the nonce; the chunk index
//! and whether it is the last are associated data, so chunks cannot be moved, dropped or
//! truncated unnoticed (a file has at least one chunk, possibly empty). A read decrypts only the chunks it covers (recently used ones are cached per open
//! file), so random access stays cheap. Segment files are write-once (written through
//! `open_write`, which refuses existing files); `meta.json` and `.managed.json` are replaced
//! atomically (temporary file, fsync, rename); tantivy's lock files are ordinary files here.

use std::{
    collections::HashMap,
    fmt,
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Seek, SeekFrom, Write},
    ops::Range,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, AeadInOut, Payload},
};
use rand::RngCore;
use tantivy::{
    Directory, HasLen,
    directory::{
        AntiCallToken, DirectoryLock, FileHandle, Lock, OwnedBytes, TerminatingWrite, WatchCallback,
        WatchCallbackList, WatchHandle, WritePtr,
        error::{DeleteError, LockError, OpenReadError, OpenWriteError},
    },
};

use crate::at_rest::Key;

const MAGIC: &[u8; 8] = b"HRTHIDX1";
const FILE_ID_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + FILE_ID_LEN + 8;
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;
/// Decrypted chunks kept per open file.
const CACHED_CHUNKS: usize = 16;
const META_FILE: &str = "meta.json";

/// An encrypted tantivy directory over `root`, under keys derived from the server key.
#[derive(Clone)]
pub struct EncryptedDirectory {
    root: PathBuf,
    key: Arc<Key>,
    watchers: Arc<WatchCallbackList>,
}

impl fmt::Debug for EncryptedDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedDirectory")
            .field("root", &self.root)
            .finish()
    }
}

impl EncryptedDirectory {
    /// Opens (creating it if needed) the directory at `root`.
    pub fn open(root: impl Into<PathBuf>, server_key: &Key) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(Self {
            root,
            key: Arc::new(Key::from_bytes(server_key.derive("hearth search index", b""))),
            watchers: Arc::default(),
        })
    }

    fn path(&self, relative: &Path) -> PathBuf {
        self.root.join(relative)
    }

    fn cipher(&self, file_id: &[u8; FILE_ID_LEN]) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.key.derive("hearth index file", file_id).into())
    }

    /// The whole encrypted form of `data` (for atomic writes).
    fn encrypt_all(&self, data: &[u8]) -> Vec<u8> {
        let file_id = new_file_id();
        let cipher = self.cipher(&file_id);
        let mut out = header(&file_id, data.len() as u64).to_vec();
        let count = chunk_count(data.len());
        for index in 0..count {
            let start = index as usize * CHUNK;
            let chunk = &data[start..(start + CHUNK).min(data.len())];
            out.extend(seal_chunk(&cipher, index, index + 1 == count, chunk));
        }
        out
    }

    fn read_file(&self, path: &Path) -> Result<EncryptedFile, OpenReadError> {
        let full = self.path(path);
        let file = File::open(&full).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => OpenReadError::FileDoesNotExist(path.to_owned()),
            _ => OpenReadError::wrap_io_error(e, path.to_owned()),
        })?;
        let mut head = [0u8; HEADER_LEN];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_owned()))?;
        let (file_id, len) =
            parse_header(&head).map_err(|e| OpenReadError::wrap_io_error(e, path.to_owned()))?;
        Ok(EncryptedFile {
            path: path.to_owned(),
            file,
            cipher: self.cipher(&file_id),
            len: len as usize,
            cache: Mutex::default(),
        })
    }
}

fn new_file_id() -> [u8; FILE_ID_LEN] {
    let mut id = [0u8; FILE_ID_LEN];
    rand::rng().fill_bytes(&mut id);
    id
}

fn header(file_id: &[u8; FILE_ID_LEN], len: u64) -> [u8; HEADER_LEN] {
    let mut head = [0u8; HEADER_LEN];
    head[..8].copy_from_slice(MAGIC);
    head[8..8 + FILE_ID_LEN].copy_from_slice(file_id);
    head[8 + FILE_ID_LEN..].copy_from_slice(&len.to_le_bytes());
    head
}

fn parse_header(head: &[u8; HEADER_LEN]) -> io::Result<([u8; FILE_ID_LEN], u64)> {
    if &head[..8] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an encrypted index file",
        ));
    }
    let mut file_id = [0u8; FILE_ID_LEN];
    file_id.copy_from_slice(&head[8..8 + FILE_ID_LEN]);
    let len = u64::from_le_bytes(head[8 + FILE_ID_LEN..].try_into().expect("8 bytes"));
    Ok((file_id, len))
}

fn nonce(index: u64) -> XNonce {
    let mut nonce = [0u8; 24];
    nonce[..8].copy_from_slice(&index.to_le_bytes());
    XNonce::from(nonce)
}

fn aad(index: u64, last: bool) -> [u8; 9] {
    let mut aad = [0u8; 9];
    aad[..8].copy_from_slice(&index.to_le_bytes());
    aad[8] = u8::from(last);
    aad
}

fn seal_chunk(cipher: &XChaCha20Poly1305, index: u64, last: bool, plain: &[u8]) -> Vec<u8> {
    cipher
        .encrypt(
            &nonce(index),
            Payload {
                msg: plain,
                aad: &aad(index, last),
            },
        )
        .expect("a 64 KiB chunk always encrypts")
}

/// How many chunks a file of `len` plaintext bytes has (at least one).
fn chunk_count(len: usize) -> u64 {
    len.div_ceil(CHUNK).max(1) as u64
}

fn corrupt(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: cannot decrypt (wrong key or corrupt file)", path.display()),
    )
}

/// An open encrypted file: decrypts the chunks a read covers.
struct EncryptedFile {
    path: PathBuf,
    file: File,
    cipher: XChaCha20Poly1305,
    len: usize,
    cache: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
}

impl fmt::Debug for EncryptedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptedFile").field("path", &self.path).finish()
    }
}

impl EncryptedFile {
    fn chunk(&self, index: u64) -> io::Result<Arc<Vec<u8>>> {
        if let Some(chunk) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&index) {
            return Ok(chunk.clone());
        }
        let start = index as usize * CHUNK;
        let plain_len = CHUNK.min(self.len.saturating_sub(start));
        if index >= chunk_count(self.len) {
            return Err(corrupt(&self.path));
        }
        let last = index + 1 == chunk_count(self.len);
        let mut sealed = vec![0u8; plain_len + TAG];
        self.file
            .read_exact_at(&mut sealed, (HEADER_LEN + index as usize * (CHUNK + TAG)) as u64)?;
        let mut buffer = sealed;
        self.cipher
            .decrypt_in_place(&nonce(index), &aad(index, last), &mut buffer)
            .map_err(|_| corrupt(&self.path))?;
        let chunk = Arc::new(buffer);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHED_CHUNKS {
            cache.clear();
        }
        cache.insert(index, chunk.clone());
        Ok(chunk)
    }

    fn read(&self, range: Range<usize>) -> io::Result<Vec<u8>> {
        if range.end > self.len || range.start > range.end {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "read past the end"));
        }
        let mut out = Vec::with_capacity(range.len());
        let mut at = range.start;
        while at < range.end {
            let index = (at / CHUNK) as u64;
            let chunk = self.chunk(index)?;
            let offset = at % CHUNK;
            let take = (CHUNK - offset).min(range.end - at);
            out.extend_from_slice(&chunk[offset..offset + take]);
            at += take;
        }
        Ok(out)
    }
}

impl HasLen for EncryptedFile {
    fn len(&self) -> usize {
        self.len
    }
}

impl FileHandle for EncryptedFile {
    fn read_bytes(&self, range: Range<usize>) -> io::Result<OwnedBytes> {
        Ok(OwnedBytes::new(self.read(range)?))
    }
}

/// Writes a new file chunk by chunk. A full chunk is sealed only when more data follows it (or
/// at the end, as the last); the header's length is written when the file is terminated.
struct EncryptedWriter {
    path: PathBuf,
    out: BufWriter<File>,
    cipher: XChaCha20Poly1305,
    file_id: [u8; FILE_ID_LEN],
    /// The chunk being filled.
    pending: Vec<u8>,
    /// A full chunk not yet known to be the last.
    full: Option<Vec<u8>>,
    next_index: u64,
    written: u64,
    terminated: bool,
}

impl EncryptedWriter {
    fn seal(&mut self, chunk: &[u8], last: bool) -> io::Result<()> {
        let sealed = seal_chunk(&self.cipher, self.next_index, last, chunk);
        self.next_index += 1;
        self.out.write_all(&sealed)
    }
}

impl Write for EncryptedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let take = (CHUNK - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == CHUNK {
                if let Some(previous) = self.full.take() {
                    self.seal(&previous, false)?;
                }
                self.full = Some(std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK)));
            }
        }
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TerminatingWrite for EncryptedWriter {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        if self.terminated {
            return Ok(());
        }
        self.terminated = true;
        let pending = std::mem::take(&mut self.pending);
        match self.full.take() {
            Some(full) if pending.is_empty() => self.seal(&full, true)?,
            Some(full) => {
                self.seal(&full, false)?;
                self.seal(&pending, true)?;
            }
            None => self.seal(&pending, true)?,
        }
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(&header(&self.file_id, self.written))?;
        self.out.flush()?;
        self.out
            .get_ref()
            .sync_data()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }
}

/// A held index lock: the locked file, unlocked when closed.
struct HeldLock {
    _file: File,
}

impl Directory for EncryptedDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        Ok(Arc::new(self.read_file(path)?))
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        fs::remove_file(self.path(path)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DeleteError::FileDoesNotExist(path.to_owned()),
            _ => DeleteError::IoError {
                io_error: Arc::new(e),
                filepath: path.to_owned(),
            },
        })
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        Ok(self.path(path).exists())
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let full = self.path(path);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&full)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => OpenWriteError::FileAlreadyExists(path.to_owned()),
                _ => OpenWriteError::wrap_io_error(e, path.to_owned()),
            })?;
        let file_id = new_file_id();
        let mut out = BufWriter::with_capacity(CHUNK + TAG, file);
        // The header's place; its length is known at the end.
        out.write_all(&[0u8; HEADER_LEN])
            .map_err(|e| OpenWriteError::wrap_io_error(e, path.to_owned()))?;
        let writer = EncryptedWriter {
            path: path.to_owned(),
            out,
            cipher: self.cipher(&file_id),
            file_id,
            pending: Vec::with_capacity(CHUNK),
            full: None,
            next_index: 0,
            written: 0,
            terminated: false,
        };
        Ok(BufWriter::new(Box::new(writer)))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        let file = self.read_file(path)?;
        file.read(0..file.len)
            .map_err(|e| OpenReadError::wrap_io_error(e, path.to_owned()))
    }

    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let full = self.path(path);
        let tmp = full.with_extension(format!("tmp{}", rand::rng().next_u32()));
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&self.encrypt_all(data))?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &full)?;
        self.sync_directory()?;
        if path == Path::new(META_FILE) {
            // Readers reload on a new meta.json; this process is the only writer.
            drop(self.watchers.broadcast());
        }
        Ok(())
    }

    fn sync_directory(&self) -> io::Result<()> {
        File::open(&self.root)?.sync_all()
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        // An advisory lock (flock) on an empty file: it excludes other processes (and other
        // opens in this one), and the kernel drops it with its holder, so a crashed process
        // leaves no stale lock behind.
        let path = self.path(&lock.filepath);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LockError::IoError(Arc::new(e)))?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(DirectoryLock::from(Box::new(HeldLock { _file: file }))),
                Err(fs::TryLockError::WouldBlock) if lock.is_blocking => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(LockError::LockBusy),
                Err(fs::TryLockError::Error(e)) => return Err(LockError::IoError(Arc::new(e))),
            }
        }
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        Ok(self.watchers.subscribe(watch_callback))
    }
}

#[cfg(test)]
mod tests {
    use tantivy::{
        Document as _, Index, IndexSettings, TantivyDocument,
        collector::TopDocs,
        doc,
        query::QueryParser,
        schema::{STORED, Schema, TEXT},
    };

    use super::*;

    fn schema() -> (Schema, tantivy::schema::Field) {
        let mut builder = Schema::builder();
        let body = builder.add_text_field("body", TEXT | STORED);
        (builder.build(), body)
    }

    fn search(index: &Index, body: tantivy::schema::Field, word: &str) -> usize {
        let reader = index.reader().unwrap();
        let query = QueryParser::for_index(index, vec![body])
            .parse_query(word)
            .unwrap();
        reader
            .searcher()
            .search(&query, &TopDocs::with_limit(10).order_by_score())
            .unwrap()
            .len()
    }

    fn all_bytes(dir: &Path) -> Vec<u8> {
        let mut bytes = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                bytes.extend(fs::read(path).unwrap());
            }
        }
        bytes
    }

    #[test]
    fn chunked_files_read_back_at_any_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EncryptedDirectory::open(tmp.path(), &Key::generate()).unwrap();
        let data: Vec<u8> = (0..(3 * CHUNK + 123)).map(|i| (i % 251) as u8).collect();
        let mut w = dir.open_write(Path::new("seg.idx")).unwrap();
        w.write_all(&data).unwrap();
        w.terminate().unwrap();
        let file = dir.open_read(Path::new("seg.idx")).unwrap();
        assert_eq!(file.len(), data.len());
        for range in [
            0..10,
            CHUNK - 5..CHUNK + 5,
            2 * CHUNK..3 * CHUNK + 123,
            0..data.len(),
        ] {
            assert_eq!(
                file.read_bytes_slice(range.clone()).unwrap().as_slice(),
                &data[range]
            );
        }
        // Write-once: a second open_write of the same file is refused.
        assert!(matches!(
            dir.open_write(Path::new("seg.idx")),
            Err(OpenWriteError::FileAlreadyExists(_))
        ));
        // Another key cannot read it; a flipped byte is detected.
        let other = EncryptedDirectory::open(tmp.path(), &Key::generate()).unwrap();
        assert!(other.atomic_read(Path::new("seg.idx")).is_err());
        let path = tmp.path().join("seg.idx");
        let mut raw = fs::read(&path).unwrap();
        raw[HEADER_LEN + 7] ^= 1;
        fs::write(&path, raw).unwrap();
        assert!(dir.atomic_read(Path::new("seg.idx")).is_err());
    }

    #[test]
    fn empty_and_whole_chunk_files_and_truncation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EncryptedDirectory::open(tmp.path(), &Key::generate()).unwrap();
        for (name, len) in [("empty", 0), ("one", CHUNK), ("two", 2 * CHUNK)] {
            let data = vec![7u8; len];
            let mut w = dir.open_write(Path::new(name)).unwrap();
            w.write_all(&data).unwrap();
            w.terminate().unwrap();
            assert_eq!(dir.atomic_read(Path::new(name)).unwrap(), data, "{name}");
        }
        // Dropping the last chunk and shortening the length is detected.
        let path = tmp.path().join("two");
        let mut raw = fs::read(&path).unwrap();
        raw.truncate(HEADER_LEN + CHUNK + TAG);
        raw[8 + FILE_ID_LEN..HEADER_LEN].copy_from_slice(&(CHUNK as u64).to_le_bytes());
        fs::write(&path, raw).unwrap();
        assert!(dir.atomic_read(Path::new("two")).is_err());
        dir.atomic_write(Path::new("meta.json"), b"{}").unwrap();
        dir.atomic_write(Path::new("meta.json"), b"{\"a\":1}").unwrap();
        assert_eq!(dir.atomic_read(Path::new("meta.json")).unwrap(), b"{\"a\":1}");
        assert!(matches!(
            dir.delete(Path::new("nope")),
            Err(DeleteError::FileDoesNotExist(_))
        ));
    }

    #[test]
    fn a_real_index_is_searchable_and_reveals_no_words() {
        let tmp = tempfile::tempdir().unwrap();
        let key = Key::generate();
        let (schema, body) = schema();
        let words = ["quetzalcoatlus", "brontosaurier", "velociraptorin"];
        {
            let dir = EncryptedDirectory::open(tmp.path(), &key).unwrap();
            let index = Index::create(dir, schema.clone(), IndexSettings::default()).unwrap();
            let mut writer = index.writer_with_num_threads(1, 15_000_000).unwrap();
            for (i, word) in words.iter().enumerate() {
                writer
                    .add_document(doc!(body => format!("message {i} about {word}")))
                    .unwrap();
            }
            for i in 0..2000 {
                writer
                    .add_document(doc!(body => format!("filler number {i}")))
                    .unwrap();
            }
            writer.commit().unwrap();
            assert_eq!(search(&index, body, "brontosaurier"), 1);
            assert_eq!(search(&index, body, "filler"), 10);
        }
        let bytes = all_bytes(tmp.path());
        for word in words.iter().chain(&["filler", "message", "body"]) {
            assert!(
                !bytes.windows(word.len()).any(|w| w == word.as_bytes()),
                "{word} is on disk in the clear"
            );
        }
        // Reopened from disk, with the same key.
        let dir = EncryptedDirectory::open(tmp.path(), &key).unwrap();
        let index = Index::open(dir).unwrap();
        assert_eq!(search(&index, body, "velociraptorin"), 1);
        let searcher = index.reader().unwrap().searcher();
        let query = QueryParser::for_index(&index, vec![body])
            .parse_query("quetzalcoatlus")
            .unwrap();
        let (_, address) = searcher
            .search(&query, &TopDocs::with_limit(1).order_by_score())
            .unwrap()[0];
        let doc: TantivyDocument = searcher.doc(address).unwrap();
        let json = doc.to_json(&schema);
        assert!(json.contains("message 0 about quetzalcoatlus"), "{json}");
        // And not with another one.
        let wrong = EncryptedDirectory::open(tmp.path(), &Key::generate()).unwrap();
        assert!(Index::open(wrong).is_err());
    }
}
