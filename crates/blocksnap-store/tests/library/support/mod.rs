//! Helpers for the library tests over [`MemoryBackend`]: a store whose objects live in memory,
//! with its account identities, disk images, restores and index cache in a temporary directory.

#![allow(dead_code)]

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use blocksnap_backend::{Backend, MemoryBackend};
use blocksnap_manifest::{ChunkId, Document, Extent, ExtentDecoder, PackId, SnapshotDoc};
use blocksnap_pack::{Entry, read_trailer};
use blocksnap_store::{
    Access, ChunkerKind, InitOptions, NoProgress, Place, SnapshotOptions, SnapshotReport, Store,
};

/// A store in memory and a directory for everything outside it.
pub struct Mem {
    pub dir: tempfile::TempDir,
    /// The objects, for tests to look at and damage behind the store's back.
    pub backend: Arc<MemoryBackend>,
    /// What the store reads and writes through: `backend`, or a wrapper of it.
    pub via: Arc<dyn Backend>,
    pub store: Store,
    /// The first account, `alice`.
    pub access: Access,
}

/// Init options of the test stores: small chunks (4 KiB), so that small images have many.
pub fn small_chunks(kind: ChunkerKind) -> InitOptions {
    InitOptions {
        chunker: kind,
        chunk_size: 4096,
        account: "alice".into(),
        ..InitOptions::default()
    }
}

impl Mem {
    /// An encrypted store with 4 KiB content-defined chunks.
    pub fn new() -> Mem {
        Mem::with(small_chunks(ChunkerKind::Cdc))
    }

    /// A store made with `opts` (its identity goes to the temporary directory).
    pub fn with(mut opts: InitOptions) -> Mem {
        Mem::in_backend(Arc::new(MemoryBackend::new()), &mut opts)
    }

    /// A store made with `opts` in `backend`.
    pub fn in_backend(backend: Arc<MemoryBackend>, opts: &mut InitOptions) -> Mem {
        Mem::through(backend.clone(), backend, opts)
    }

    /// A store made with `opts` whose objects are `backend`'s, read and written through `via`
    /// (a wrapper of it: a counting or failing backend).
    pub fn through(
        backend: Arc<MemoryBackend>,
        via: Arc<dyn Backend>,
        opts: &mut InitOptions,
    ) -> Mem {
        let dir = tempfile::tempdir().unwrap();
        opts.identity = Some(dir.path().join(format!("{}.key", opts.account)));
        opts.config_home = Some(dir.path().join("config"));
        let (store, report) = Store::init_in(
            via.clone(),
            Place::Remote(format!("memory://{}", opts.account)),
            opts,
        )
        .unwrap();
        let store = store
            .with_cache_home(dir.path().join("cache"))
            .with_config_home(dir.path().join("config"));
        let access = store
            .access(Some(&opts.account), Some(&report.identity))
            .unwrap();
        Mem {
            dir,
            backend,
            via,
            store,
            access,
        }
    }

    /// The store opened again from its objects (same cache).
    pub fn reopen(&self) -> Store {
        Store::open_in(self.via.clone(), self.store.place().clone())
            .unwrap()
            .with_cache_home(self.dir.path().join("cache"))
            .with_config_home(self.dir.path().join("config"))
    }

    /// The same store with its config's `pack_size` set to `bytes` (the config is written once
    /// by init; a test rewrites it to make packs small).
    pub fn set_pack_size(&mut self, bytes: u64) {
        let mut config = self.store.config().clone();
        config.pack_size = bytes;
        self.backend.delete("config").unwrap();
        self.backend.create("config", &config.to_json()).unwrap();
        self.store = self.reopen();
    }

    /// A path in the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a disk image and returns its path.
    pub fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    /// A snapshot of the file `name` holding `data`, as volume `volume`.
    pub fn snapshot(&self, name: &str, data: &[u8], volume: &str) -> SnapshotReport {
        self.snapshot_as(&self.access, name, data, volume)
    }

    /// [`Mem::snapshot`] by another account.
    pub fn snapshot_as(
        &self,
        access: &Access,
        name: &str,
        data: &[u8],
        volume: &str,
    ) -> SnapshotReport {
        let source = self.file(name, data);
        self.store
            .snapshot(
                access,
                &SnapshotOptions {
                    source,
                    volume: Some(volume.into()),
                    ..SnapshotOptions::default()
                },
                &NoProgress,
            )
            .unwrap()
    }

    /// The bytes of snapshot `id` as restored to a new file.
    pub fn restored(&self, id: &str) -> Vec<u8> {
        self.restored_from(&self.store, &self.access, id)
    }

    /// The bytes of snapshot `id` of `store` restored by `access`.
    pub fn restored_from(&self, store: &Store, access: &Access, id: &str) -> Vec<u8> {
        let out = self.path(&format!("restore-{}.img", random_name()));
        store.restore(access, id, &out, &NoProgress).unwrap();
        let data = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        data
    }

    /// A second account with its identity in the temporary directory.
    pub fn add_account(&self, name: &str) -> Access {
        let identity = self.path(&format!("{name}.key"));
        self.store.create_account(name, Some(&identity)).unwrap();
        self.store.access(Some(name), Some(&identity)).unwrap()
    }

    /// Every pack object: its key and bytes (not the index objects beside them).
    pub fn pack_objects(&self) -> Vec<(String, Vec<u8>)> {
        objects(&*self.backend, "packs/")
            .into_iter()
            .filter(|(k, _)| !k.ends_with(".idx"))
            .collect()
    }

    /// Every pack's id and trailer entries, read with `access`'s key of the first snapshot.
    pub fn trailers(&self) -> Vec<(PackId, Vec<Entry>)> {
        let codec = self.store.codec(&self.access, self.default_key()).unwrap();
        self.pack_objects()
            .into_iter()
            .map(|(key, bytes)| {
                let id: PackId = key.rsplit('/').next().unwrap().parse().unwrap();
                let (_, entries) = read_trailer(Cursor::new(&bytes), |_| Some(&codec)).unwrap();
                (id, entries)
            })
            .collect()
    }

    /// The id of the key named `default`.
    pub fn default_key(&self) -> Option<blocksnap_manifest::KeyId> {
        Some(self.store.resolve_key("default").unwrap().id)
    }

    /// Total bytes of the pack objects.
    pub fn pack_bytes(&self) -> u64 {
        self.backend
            .list("packs/")
            .unwrap()
            .iter()
            .filter(|m| !m.key.ends_with(".idx"))
            .map(|m| m.size)
            .sum()
    }

    /// Replaces an object's bytes (delete, then create: the backend has no overwrite).
    pub fn put(&self, key: &str, data: &[u8]) {
        put(&*self.backend, key, data);
    }

    /// The data chunks of snapshot `id`, in order (metadata chunks not included).
    pub fn data_chunks(&self, id: &str) -> Vec<ChunkId> {
        let doc = self.store.resolve_snapshot(id).unwrap();
        data_chunks(&self.store, &self.access, &doc)
    }
}

/// Every object under `prefix`, with its bytes.
pub fn objects(backend: &dyn Backend, prefix: &str) -> Vec<(String, Vec<u8>)> {
    backend
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|m| {
            let data = backend.get(&m.key).unwrap();
            (m.key, data)
        })
        .collect()
}

/// Replaces an object's bytes.
pub fn put(backend: &dyn Backend, key: &str, data: &[u8]) {
    backend.delete(key).unwrap();
    backend.create(key, data).unwrap();
}

/// The data chunks of a snapshot, decoded from its extent list (read through the packs with
/// `access`'s key).
pub fn data_chunks(store: &Store, access: &Access, doc: &SnapshotDoc) -> Vec<ChunkId> {
    let codec = store.codec(access, doc.key).unwrap();
    // The extent list is stored as metadata chunks: find them in the pack trailers.
    let mut stream = Vec::new();
    for id in &doc.extents.chunks {
        stream.extend(read_chunk(store, &codec, id));
    }
    let mut dec = ExtentDecoder::new(doc.size);
    let mut out = Vec::new();
    dec.feed::<blocksnap_manifest::ExtentError>(&stream, |_, e| {
        if let Extent::Data { id, .. } = e {
            out.push(id);
        }
        Ok(())
    })
    .unwrap();
    dec.finish().unwrap();
    out
}

/// One chunk, read and decoded from whichever pack's trailer lists it.
pub fn read_chunk(store: &Store, codec: &blocksnap_pack::ChunkCodec, id: &ChunkId) -> Vec<u8> {
    for (_, bytes) in objects(&**store.backend(), "packs/") {
        let Ok((header, entries)) = read_trailer(Cursor::new(&bytes), |_| Some(codec)) else {
            continue;
        };
        if let Some(e) = entries.iter().find(|e| e.id == *id) {
            let rec = bytes[e.offset as usize..][..e.stored_len as usize].to_vec();
            let cipher = codec.pack_cipher(&header.salt);
            return codec
                .decode(cipher.as_ref(), id, e.offset, e.raw_len, rec)
                .unwrap();
        }
    }
    panic!("no pack holds chunk {id}");
}

/// A name no other call returns.
pub fn random_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Deterministic pseudo-random bytes (incompressible).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Text-like, compressible bytes from `seed`.
pub fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "block", "snapshot", "volume", "chunk", "pack", "the", "disk", "image", "restore", "\n",
    ];
    let r = random_bytes(len / 4 + 16, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[r[i % r.len()] as usize % words.len()].as_bytes());
        out.push(b' ');
        i += 1;
    }
    out.truncate(len);
    out
}

/// A disk-like image: random blocks, text, and runs of zeros.
pub fn disk_image(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut i = 0u64;
    while out.len() < len {
        let part = (64 << 10).min(len - out.len());
        match i % 3 {
            0 => out.extend(random_bytes(part, seed * 1000 + i)),
            1 => out.extend(
                b"blocksnap disk image text, compressible. "
                    .iter()
                    .cycle()
                    .take(part),
            ),
            _ => out.extend(std::iter::repeat_n(0u8, part)),
        }
        i += 1;
    }
    out
}

/// The error kind of a result that must be an error.
pub fn kind_of<T: std::fmt::Debug>(
    r: blocksnap_store::Result<T>,
) -> (blocksnap_store::ErrorKind, String) {
    let e = r.unwrap_err();
    (e.kind(), e.to_string())
}

/// A document of `D` read straight from the backend.
pub fn doc_of<D: Document>(backend: &dyn Backend, key: &str) -> D {
    D::from_json(&backend.get(key).unwrap()).unwrap()
}
