//! The crash-point lab: a store (or two) set up once as a template on real local directories,
//! then, for every operation number N of an operation, a fresh copy on which the operation runs
//! over a [`FaultBackend`] that stops dead before operation N — as if the machine lost power
//! there — and what is left is judged with the plain [`LocalBackend`]:
//!
//! - every snapshot committed before (live, or in the trash where the operation may move it
//!   there) and every snapshot the stopped run committed restores byte-identical to its source,
//!   and names as its parent only a snapshot that was committed;
//! - `check --read-data` finds no problem (notes about leftovers are fine);
//! - the same operation run again on what the stop left completes, and leaves a sound store.
//!
//! Each point is judged twice: with the index cache as the stopped run left it (a real user's
//! cache survives a crash), and with no cache at all (a new host, or a lost cache: the index is
//! rebuilt from the pack trailers).

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use blocksnap_backend::{
    Backend, FaultBackend, FaultPlan, LocalBackend, ObjectMeta, ObjectReader, Staged, Version,
};
use blocksnap_store::{
    Access, Document, InitOptions, LockDoc, NoProgress, Place, Result, SnapshotId, SnapshotOptions,
    SnapshotReport, Store, TAG_COPIED_FROM,
};

/// The first store of a lab: the one the fault backend wraps.
pub const MAIN: &str = "main";

/// Chunks of about 16 KiB: small images still make many chunks and several packs.
pub const CHUNK: u32 = 16 * 1024;

/// A lab: template stores, their sources, the content every committed snapshot must restore to.
pub struct Lab {
    pub dir: PathBuf,
    /// Store names, [`MAIN`] first.
    stores: Vec<String>,
    /// Each store's first account and its identity.
    accounts: BTreeMap<String, (String, PathBuf)>,
    /// What each snapshot committed in setup restores to (a copy of its source then).
    expected: BTreeMap<SnapshotId, PathBuf>,
}

impl Drop for Lab {
    /// A lab that passed is removed; one that failed stays, to be examined.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Where an operation runs: the stores of one crash point, their cache, and the fault backend
/// (none for a re-run and for judging).
pub struct Ctx<'a> {
    pub lab: &'a Lab,
    root: PathBuf,
    cache: PathBuf,
    fault: Option<FaultBackend>,
    /// Snapshots restored byte-identical at this point already. Snapshots never change: the
    /// judgement after the re-run, and the one without a cache (the same objects), restore only
    /// those not restored yet; `check --read-data` reads every chunk each time.
    restored: Rc<RefCell<BTreeSet<SnapshotId>>>,
}

/// What a scenario asks of the lab.
pub struct Scenario<'a> {
    /// The operation. `again` is false for the run that is stopped, true for the re-run on
    /// what the stop left; the re-run must return `Ok`.
    pub op: &'a dyn Fn(&Ctx, bool) -> Result<()>,
    /// The operation may move live snapshots to the trash (policy run).
    pub may_trash: bool,
    /// Snapshots damaged before the operation (repair packs): not restored before `after`.
    pub damaged: Vec<SnapshotId>,
    /// Problems `check` may report until the re-run and `after` have run (the damage repair
    /// packs is given to mend).
    pub tolerated: &'a dyn Fn(&str) -> bool,
    /// Called after the re-run, before the final judgement (assert what the operation did,
    /// heal what it cannot).
    pub after: &'a dyn Fn(&Ctx),
}

impl Default for Scenario<'_> {
    fn default() -> Self {
        Scenario {
            op: &|_, _| Ok(()),
            may_trash: false,
            damaged: Vec::new(),
            tolerated: &|_| false,
            after: &|_| {},
        }
    }
}

impl Lab {
    /// A new lab under the test directory.
    pub fn new(name: &str) -> Lab {
        let dir = scratch()
            .join("blocksnap-tests")
            .join(format!("crash-points-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for d in ["src", "expect", "ids", "template/cache"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        Lab {
            dir,
            stores: Vec::new(),
            accounts: BTreeMap::new(),
            expected: BTreeMap::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A source image path under `src/`.
    pub fn src(&self, name: &str) -> PathBuf {
        self.dir.join("src").join(name)
    }

    fn template_cache(&self) -> PathBuf {
        self.dir.join("template/cache")
    }

    /// Creates the template store `name` (account `account`, small chunks, 1 MiB packs — the
    /// smallest a config allows — so an operation writes several) and opens it.
    pub fn init(&mut self, name: &str, account: &str) -> Store {
        let path = self.dir.join("template").join(name);
        let identity = self.dir.join("ids").join(format!("{name}-{account}.key"));
        let opts = InitOptions {
            account: account.into(),
            identity: Some(identity.clone()),
            chunk_size: CHUNK,
            ..InitOptions::default()
        };
        let (store, _) = Store::init(&path, &opts).unwrap();
        drop(store);
        let config = path.join("config");
        let mut doc: serde_json::Value =
            serde_json::from_slice(&fs::read(&config).unwrap()).unwrap();
        doc["pack_size"] = serde_json::json!(1 << 20);
        fs::write(&config, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
        self.stores.push(name.into());
        self.accounts
            .insert(name.into(), (account.into(), identity));
        self.open(name)
    }

    /// The template store `name`, over the plain local backend.
    pub fn open(&self, name: &str) -> Store {
        open_plain(
            &self.dir.join("template").join(name),
            &self.template_cache(),
        )
    }

    /// The first account of store `name` in `store`.
    pub fn access(&self, store: &Store, name: &str) -> Access {
        let (account, identity) = &self.accounts[name];
        store.access(Some(account), Some(identity)).unwrap()
    }

    /// Another account's identity path (for `create_account`).
    pub fn identity(&self, store: &str, account: &str) -> PathBuf {
        self.dir.join("ids").join(format!("{store}-{account}.key"))
    }

    /// Records that snapshot `id` must restore to what `source` holds now.
    pub fn remember(&mut self, id: SnapshotId, source: &Path) {
        let copy = self.dir.join("expect").join(id.to_string());
        fs::copy(source, &copy).unwrap();
        self.expected.insert(id, copy);
    }

    /// Takes a snapshot of `source` in the template store `name` and remembers it.
    pub fn snapshot(&mut self, store: &Store, name: &str, source: &Path) -> SnapshotReport {
        let access = self.access(store, name);
        let opts = SnapshotOptions {
            source: source.into(),
            ..SnapshotOptions::default()
        };
        let r = store.snapshot(&access, &opts, &NoProgress).unwrap();
        self.remember(r.id, source);
        r
    }

    /// Runs the scenario's operation stopped before operation 1, 2, … in turn — every one the
    /// clean run makes, and on while a run still reaches its stop — each time on a fresh copy
    /// of the template, and judges what each stop left. Returns the number of points.
    pub fn enumerate(&self, sc: &Scenario) -> u64 {
        let started = Instant::now();
        let committed = self.committed();
        // The clean run counts the operations (and must complete).
        let (clean, r) = self.stopped_run(sc, None);
        r.unwrap_or_else(|e| panic!("the clean run failed: {e}"));
        let ops = clean.ops();
        if std::env::var_os("CRASH_LAB_LOG").is_some() {
            eprintln!("{}", clean.log().join("\n"));
        }
        assert!(ops > 0);
        let mut n = 1;
        loop {
            let (fault, r) = self.stopped_run(sc, Some(n));
            let stopped = fault.is_dead();
            // A stopped run may still return Ok (a policy run reports a volume it could not
            // snapshot and goes on): what counts is what it left.
            if !stopped {
                r.unwrap_or_else(|e| panic!("stop {n}: the run completed with an error: {e}"));
            }
            let log = fault.log();
            let at = log
                .get(n as usize - 1)
                .cloned()
                .unwrap_or_else(|| format!("{n} (not reached)"));
            let when = format!("stopped before operation {at}");
            self.judge(sc, &committed, &when);
            if !stopped && n > ops {
                break;
            }
            n += 1;
            assert!(
                n <= 4 * ops + 20,
                "the runs never completed: {ops} ops in the clean run"
            );
        }
        eprintln!(
            "{} points (the clean run made {ops} operations) in {:.1?}",
            n - 1,
            started.elapsed()
        );
        n - 1
    }

    /// Live snapshots of every template store, by store.
    fn committed(&self) -> BTreeMap<String, BTreeSet<SnapshotId>> {
        let mut out = BTreeMap::new();
        for name in &self.stores {
            let store = self.open(name);
            let ids: BTreeSet<SnapshotId> = store
                .list_snapshots()
                .unwrap()
                .iter()
                .map(|s| s.id)
                .collect();
            out.insert(name.clone(), ids);
        }
        out
    }

    fn point_dir(&self) -> PathBuf {
        self.dir.join("point")
    }

    /// Copies the template to a fresh point directory and runs the operation there over a
    /// fault backend stopping before `stop` (never: the clean run). Returns the operations
    /// backend (its count and log) and the result.
    fn stopped_run(&self, sc: &Scenario, stop: Option<u64>) -> (FaultBackend, Result<()>) {
        let root = self.point_dir();
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        for name in &self.stores {
            copy_dir(&self.dir.join("template").join(name), &root.join(name));
        }
        copy_dir(&self.template_cache(), &root.join("cache"));
        let fault = FaultBackend::new(
            Arc::new(LocalBackend::new(root.join(MAIN))),
            FaultPlan {
                stop_before: stop,
                ..FaultPlan::default()
            },
        );
        let ctx = Ctx {
            lab: self,
            root: root.clone(),
            cache: root.join("cache"),
            fault: Some(fault.clone()),
            restored: Rc::default(),
        };
        let r = (sc.op)(&ctx, false);
        (fault, r)
    }

    /// Judges what a stop left in the point directory: with the cache it left, and (on a copy)
    /// without any.
    fn judge(&self, sc: &Scenario, committed: &BTreeMap<String, BTreeSet<SnapshotId>>, when: &str) {
        let root = self.point_dir();
        for name in &self.stores {
            kill_locks(&root.join(name));
        }
        // The second judgement works on a copy of the stores, taken before the first changes
        // them, with an empty cache.
        let cold = self.dir.join("point-cold");
        let _ = fs::remove_dir_all(&cold);
        fs::create_dir_all(cold.join("cache")).unwrap();
        for name in &self.stores {
            copy_dir(&root.join(name), &cold.join(name));
        }
        let restored = Rc::default();
        for (root, what) in [(root, "the cache kept"), (cold, "the cache lost")] {
            let ctx = Ctx {
                lab: self,
                cache: root.join("cache"),
                root,
                fault: None,
                restored: Rc::clone(&restored),
            };
            let when = format!("{when}, {what}");
            ctx.verify(sc, committed, false, &when);
            (sc.op)(&ctx, true)
                .unwrap_or_else(|e| panic!("{when}: the operation run again failed: {e}"));
            (sc.after)(&ctx);
            ctx.verify(sc, committed, true, &format!("{when}, then run again"));
        }
    }
}

impl Ctx<'_> {
    /// Store `name` of this point: over the fault backend (the main store) or tied to it (the
    /// others stop when it does) during the stopped run, else over the plain local backend.
    pub fn open(&self, name: &str) -> Result<Store> {
        let path = self.root.join(name);
        let backend: Arc<dyn Backend> = match &self.fault {
            None => Arc::new(LocalBackend::new(&path)),
            Some(f) if name == MAIN => Arc::new(f.clone()),
            Some(f) => Arc::new(Tied {
                inner: Arc::new(LocalBackend::new(&path)),
                fault: f.clone(),
            }),
        };
        Ok(Store::open_in(backend, Place::Local(path))?
            .with_cache_home(&self.cache)
            .with_config_home(&self.cache))
    }

    /// True when this judgement runs with the index cache the stopped run left (false: with
    /// none).
    pub fn cache_kept(&self) -> bool {
        self.root == self.lab.point_dir()
    }

    /// The first account of store `name` (an error once the backend has stopped).
    pub fn access(&self, store: &Store, name: &str) -> Result<Access> {
        let (account, identity) = &self.lab.accounts[name];
        store.access(Some(account), Some(identity))
    }

    /// Restores snapshot `id` of `store` and asserts it is byte-identical to `expected`.
    pub fn assert_restores(
        &self,
        store: &Store,
        access: &Access,
        id: SnapshotId,
        expected: &Path,
        when: &str,
    ) {
        let out = self.root.join("restored.img");
        let _ = fs::remove_file(&out);
        store
            .restore(access, &id.to_string(), &out, &NoProgress)
            .unwrap_or_else(|e| panic!("{when}: snapshot {id} does not restore: {e}"));
        assert_same(expected, &out, &format!("{when}: snapshot {id}"));
        fs::remove_file(&out).unwrap();
        self.restored.borrow_mut().insert(id);
    }

    /// What snapshot `doc` must restore to: the copy taken when it was committed in setup, the
    /// source it read (a snapshot the operation took: sources do not change during one), or
    /// for a copy, what the snapshot it copies restores to.
    fn expected_for(&self, doc: &blocksnap_store::SnapshotDoc) -> Option<PathBuf> {
        if let Some(p) = self.lab.expected.get(&doc.id) {
            return Some(p.clone());
        }
        if let Some(from) = doc.tags.get(TAG_COPIED_FROM) {
            let (_, id) = from.split_once('/')?;
            return self.lab.expected.get(&id.parse().ok()?).cloned();
        }
        doc.source_path.as_ref().map(PathBuf::from)
    }

    /// The three properties, on every store of the point.
    fn verify(
        &self,
        sc: &Scenario,
        committed: &BTreeMap<String, BTreeSet<SnapshotId>>,
        healed: bool,
        when: &str,
    ) {
        for name in &self.lab.stores {
            let when = &format!("{when}, store {name}");
            let store = self.open(name).unwrap();
            let access = self.access(&store, name).unwrap();
            let live = store.list_snapshots().unwrap();
            let live_ids: BTreeSet<SnapshotId> = live.iter().map(|s| s.id).collect();
            let trashed: BTreeSet<SnapshotId> = store
                .list_trash()
                .unwrap()
                .into_iter()
                .filter_map(|t| t.snapshot.map(|s| s.id))
                .collect();
            for id in &committed[name] {
                assert!(
                    live_ids.contains(id) || (sc.may_trash && trashed.contains(id)),
                    "{when}: snapshot {id}, committed before, is gone"
                );
            }
            for doc in &live {
                // A parent is a snapshot that was committed (a head naming one a stop kept
                // from being written is not trusted).
                if let Some(p) = doc.parent {
                    assert!(
                        live_ids.contains(&p)
                            || trashed.contains(&p)
                            || self.lab.expected.contains_key(&p),
                        "{when}: snapshot {} names {p} as its parent, which was never committed",
                        doc.id
                    );
                }
                if (!healed && sc.damaged.contains(&doc.id))
                    || self.restored.borrow().contains(&doc.id)
                {
                    continue;
                }
                let expected = self
                    .expected_for(doc)
                    .unwrap_or_else(|| panic!("{when}: snapshot {} has no known source", doc.id));
                self.assert_restores(&store, &access, doc.id, &expected, when);
            }
            let report = store.check(&access, true, &NoProgress).unwrap();
            let problems: Vec<&String> = report
                .problems
                .iter()
                .filter(|p| healed || !(sc.tolerated)(p))
                .collect();
            assert!(
                problems.is_empty() && report.not_verified.is_empty(),
                "{when}: check found {:#?}\nnot verified: {:#?}\nnotes: {:#?}",
                problems,
                report.not_verified,
                report.notes
            );
        }
    }
}

/// Another store of the lab during a stopped run: every operation first asks the fault backend
/// (one operation there, a harmless read), so it is counted with the main store's and fails
/// once the process has stopped.
#[derive(Debug)]
struct Tied {
    inner: Arc<dyn Backend>,
    fault: FaultBackend,
}

impl Tied {
    fn alive(&self) -> blocksnap_backend::Result<()> {
        self.fault.head("config").map(|_| ())
    }
}

impl Backend for Tied {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self, key: &str, data: &[u8]) -> blocksnap_backend::Result<()> {
        self.alive()?;
        self.inner.create(key, data)
    }
    fn stage(&self, under: &str) -> blocksnap_backend::Result<Box<dyn Staged>> {
        self.alive()?;
        Ok(Box::new(TiedStaged {
            inner: self.inner.stage(under)?,
            fault: self.fault.clone(),
        }))
    }
    fn get(&self, key: &str) -> blocksnap_backend::Result<Vec<u8>> {
        self.alive()?;
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, offset: u64, len: u64) -> blocksnap_backend::Result<Vec<u8>> {
        self.alive()?;
        self.inner.get_range(key, offset, len)
    }
    fn head(&self, key: &str) -> blocksnap_backend::Result<Option<ObjectMeta>> {
        self.alive()?;
        self.inner.head(key)
    }
    fn list(&self, prefix: &str) -> blocksnap_backend::Result<Vec<ObjectMeta>> {
        self.alive()?;
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> blocksnap_backend::Result<()> {
        self.alive()?;
        self.inner.delete(key)
    }
    fn get_versioned(&self, key: &str) -> blocksnap_backend::Result<(Vec<u8>, Version)> {
        self.alive()?;
        self.inner.get_versioned(key)
    }
    fn open(&self, key: &str) -> blocksnap_backend::Result<Arc<dyn ObjectReader>> {
        self.alive()?;
        Ok(Arc::new(TiedReader {
            inner: self.inner.open(key)?,
            fault: self.fault.clone(),
        }))
    }
    fn temporaries(&self) -> blocksnap_backend::Result<Vec<ObjectMeta>> {
        self.alive()?;
        self.inner.temporaries()
    }
    fn remove_temporary(&self, name: &str) -> blocksnap_backend::Result<()> {
        self.alive()?;
        self.inner.remove_temporary(name)
    }
    fn replace(
        &self,
        key: &str,
        data: &[u8],
        expected: Option<&Version>,
    ) -> blocksnap_backend::Result<Version> {
        self.alive()?;
        self.inner.replace(key, data, expected)
    }
}

struct TiedReader {
    inner: Arc<dyn ObjectReader>,
    fault: FaultBackend,
}

impl ObjectReader for TiedReader {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, offset: u64, len: u64) -> blocksnap_backend::Result<Vec<u8>> {
        self.fault.head("config")?;
        self.inner.read_at(offset, len)
    }
}

struct TiedStaged {
    inner: Box<dyn Staged>,
    fault: FaultBackend,
}

impl Write for TiedStaged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.fault.is_dead() {
            return Err(std::io::Error::other("injected fault: the process stopped"));
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Staged for TiedStaged {
    fn commit(self: Box<Self>, key: &str) -> blocksnap_backend::Result<()> {
        self.fault.head("config")?;
        self.inner.commit(key)
    }
    fn len(&self) -> u64 {
        self.inner.len()
    }
}

/// Where labs live: memory (`/dev/shm`) where there is one — the stores of a lab are copied
/// and judged hundreds of times, and its fsyncs then cost nothing — else the temporary
/// directory.
fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let usable = shm.is_dir() && tempfile::tempdir_in(shm).is_ok();
    if usable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A store over the plain local backend, its cache under `cache`.
pub fn open_plain(path: &Path, cache: &Path) -> Store {
    Store::open_in(
        Arc::new(LocalBackend::new(path)),
        Place::Local(path.to_path_buf()),
    )
    .unwrap()
    .with_cache_home(cache)
    // The client's trust state goes with its cache: a point's copy of the store is a store
    // put back from a backup, which a client that kept its trust state would rightly refuse.
    .with_config_home(cache)
}

/// What the stopped process's end does to its lock objects: they stay, and are now stale (the
/// next command of this host removes them, as it does those of a killed process). In this
/// process the pid still lives, so its start time is made another's.
fn kill_locks(store: &Path) {
    let Ok(dir) = fs::read_dir(store.join("locks")) else {
        return;
    };
    for e in dir {
        let path = e.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(mut doc) = LockDoc::from_json(&fs::read(&path).unwrap()) else {
            continue;
        };
        if doc.pid == std::process::id() {
            doc.pid_start = 1;
            fs::write(&path, doc.to_json()).unwrap();
        }
    }
}

/// Copies a directory tree (files and folders).
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Asserts two files hold the same bytes.
pub fn assert_same(expected: &Path, actual: &Path, what: &str) {
    let (a, b) = (fs::read(expected).unwrap(), fs::read(actual).unwrap());
    assert_eq!(a.len(), b.len(), "{what}: the size differs");
    if let Some(at) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("{what}: differs from {} at byte {at}", expected.display());
    }
}

pub use crate::support::{random_bytes, text_bytes};

fn tool(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: install e2fsprogs");
}

/// A real ext4 image of `size` bytes holding `files` files (binaries and text, about
/// `avg_kib` KiB each) made from `seed`.
pub fn ext4_image(path: &Path, size: u64, files: usize, avg_kib: usize, seed: u64) {
    let tree = path.with_extension("tree");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::create_dir_all(tree.join("doc")).unwrap();
    for i in 0..files {
        let s = seed * 1000 + i as u64;
        let len = 1024 + (random_bytes(8, s)[0] as usize) * avg_kib * 8;
        if i % 2 == 0 {
            fs::write(
                tree.join("bin").join(format!("prog{i}")),
                random_bytes(len, s),
            )
            .unwrap();
        } else {
            fs::write(
                tree.join("doc").join(format!("text{i}.txt")),
                text_bytes(len, s),
            )
            .unwrap();
        }
    }
    fs::File::create(path).unwrap().set_len(size).unwrap();
    let out = Command::new(tool("mkfs.ext4"))
        .args(["-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d"])
        .arg(&tree)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_dir_all(&tree).unwrap();
}

/// Writes a new file into an ext4 image (debugfs), changing the disk as a running system would.
pub fn ext4_add_file(image: &Path, name: &str, data: &[u8]) {
    let local = image.with_extension("newfile");
    fs::write(&local, data).unwrap();
    let out = Command::new(tool("debugfs"))
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} {name}", local.display()))
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debugfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(&local).unwrap();
}

/// Overwrites bytes of a file in place.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// The pack files of a local store.
pub fn pack_files(store: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let Ok(dirs) = fs::read_dir(store.join("packs")) else {
        return out;
    };
    for d in dirs {
        let d = d.unwrap().path();
        if !d.is_dir() {
            continue;
        }
        for f in fs::read_dir(&d).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if !name.starts_with('.') && !name.contains('.') {
                out.insert(f);
            }
        }
    }
    out
}
