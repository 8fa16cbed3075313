//! `recovery export|import`: what a store needs besides an identity to be read again.
//!
//! The identity unwraps a grant, but the grant lives in the store, in `keys/KEY-ID.json`; the
//! store's settings (chunker, encryption, id) live in `config`; the accounts' public keys in
//! `accounts/`. Losing any of them makes data unreadable even with the identity. `recovery
//! export FILE` writes the three kinds into one file (mode 0600: it holds only public keys and
//! wrapped data keys, but it is the store's map); `recovery import FILE` puts back those that
//! are missing or damaged (a damaged one goes to `quarantine/` first) and never replaces one
//! that reads. It works on a store whose `config` is gone, which nothing else can open.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blocksnap_backend::Backend;

use blocksnap_manifest::{
    AccountDoc, ConfigDoc, Document, KeyDoc, KeyId, SnapshotDoc, StoreId, TrashDoc,
};
use blocksnap_pack::PackHeader;
use blocksnap_pack::format::HEADER_LEN;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::progress::Progress;
use crate::repo::documents::QuarantinedDoc;
use crate::repo::layout::Kind;
use crate::repo::objects::store_data_held;
use crate::repo::{CONFIG, DamagedDoc, Place, Store, describe};

/// The recovery file's format.
pub const RECOVERY_FORMAT: &str = "blocksnap.recovery/v1";

/// The recovery file (docs/FORMAT.md): the documents whole, as the store holds them.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoveryFile {
    format: String,
    store: StoreId,
    exported: String,
    config: ConfigDoc,
    accounts: Vec<AccountDoc>,
    keys: Vec<KeyDoc>,
}

/// What `recovery export` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct RecoveryExportReport {
    /// The file written.
    pub file: PathBuf,
    /// The store's id.
    pub store: StoreId,
    /// The accounts in it.
    pub accounts: Vec<String>,
    /// The keys in it (ids).
    pub keys: Vec<KeyId>,
    /// Damaged account or key documents left out (an older export may hold them).
    pub skipped: Vec<DamagedDoc>,
}

/// What `recovery import` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecoveryImportReport {
    /// The store's id.
    pub store: Option<StoreId>,
    /// Documents written from the file (they were missing or damaged).
    pub restored: Vec<PathBuf>,
    /// Documents left as they were: they read.
    pub kept: Vec<PathBuf>,
    /// Damaged documents moved to `quarantine/` before their copy from the file was written.
    pub quarantined: Vec<QuarantinedDoc>,
}

/// A document parsed and checked as a reader would: its own format, every field valid.
fn checked<D: Document>(doc: &D, file: &Path) -> Result<()> {
    D::from_json(&doc.to_json()).map(|_| ()).map_err(|e| {
        StoreError::Usage(format!(
            "{} is not a usable recovery file: {e}",
            file.display()
        ))
    })
}

impl Store {
    /// Writes the config, every account document and every key document into `file` (mode
    /// 0600), which must not exist yet.
    pub fn export_recovery(
        &self,
        file: &Path,
        progress: &dyn Progress,
    ) -> Result<RecoveryExportReport> {
        if file.exists() || file.is_symlink() {
            return Err(StoreError::Usage(format!(
                "{} exists; give a new file name (an export never replaces a file)",
                file.display()
            )));
        }
        let accounts = self.list_accounts()?;
        let keys = self.list_keys()?;
        let mut skipped = self.skipped(Kind::Account);
        skipped.extend(self.skipped(Kind::Key));
        self.warn_damaged(progress);
        for d in &skipped {
            progress.message(&format!(
                "warning: {} is not in the export: it cannot be read; an older export may hold it",
                d.path.display()
            ));
        }
        let doc = RecoveryFile {
            format: RECOVERY_FORMAT.into(),
            store: self.config().id,
            exported: fsutil::now_rfc3339(),
            config: self.config().clone(),
            accounts,
            keys,
        };
        let mut bytes = serde_json::to_vec_pretty(&doc)
            .map_err(|e| StoreError::Other(format!("cannot encode the recovery file: {e}")))?;
        bytes.push(b'\n');
        fsutil::write_atomic(file, &bytes, 0o600)?;
        Ok(RecoveryExportReport {
            file: file.to_path_buf(),
            store: doc.store,
            accounts: doc.accounts.iter().map(|a| a.name.clone()).collect(),
            keys: doc.keys.iter().map(|k| k.id).collect(),
            skipped,
        })
    }

    /// Puts back, into the store at `root`, every config, account and key document of the
    /// recovery file `file` that is missing or damaged there (a damaged one is moved to
    /// `quarantine/` first). One that reads is never replaced. The store may have lost its
    /// `config`; the file must be of this store.
    pub fn import_recovery(
        root: &Path,
        file: &Path,
        progress: &dyn Progress,
    ) -> Result<RecoveryImportReport> {
        let root = &crate::repo::location::local_store_path(root)?;
        Self::import_recovery_in(
            Arc::new(crate::repo::local_backend(root)),
            Place::Local(root.clone()),
            file,
            progress,
        )
    }

    /// [`Store::import_recovery`] into the store in `backend`.
    pub fn import_recovery_in(
        backend: Arc<dyn Backend>,
        place: Place,
        file: &Path,
        progress: &dyn Progress,
    ) -> Result<RecoveryImportReport> {
        let doc: RecoveryFile = serde_json::from_slice(&fsutil::read(file)?).map_err(|e| {
            StoreError::Usage(format!(
                "{} is not a blocksnap recovery file ({e}); `blocksnap recovery export` writes one",
                file.display()
            ))
        })?;
        if doc.format != RECOVERY_FORMAT {
            return Err(StoreError::Usage(format!(
                "{} has format '{}', but this blocksnap reads only '{RECOVERY_FORMAT}'",
                file.display(),
                doc.format.chars().take(80).collect::<String>()
            )));
        }
        checked(&doc.config, file)?;
        for a in &doc.accounts {
            checked(a, file)?;
        }
        for k in &doc.keys {
            checked(k, file)?;
        }
        if doc.config.id != doc.store {
            return Err(StoreError::Usage(format!(
                "{} is not a usable recovery file: it names store {} but holds the config of {}",
                file.display(),
                doc.store,
                doc.config.id
            )));
        }

        // Which store is there: its config if it reads, else its data must agree with the file.
        let present = match backend.get(CONFIG) {
            Ok(b) => Some(ConfigDoc::from_json(&b)),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(StoreError::backend(e).context(&describe(&place, CONFIG))),
        };
        let config = match present {
            Some(Ok(c)) if c.id != doc.store => {
                return Err(StoreError::Usage(format!(
                    "{} is the recovery file of store {}, but the store at {} is {}; nothing was \
                     changed",
                    file.display(),
                    doc.store,
                    place,
                    c.id
                )));
            }
            Some(Ok(c)) => c,
            _ => {
                if present.is_none() && store_data_held(&*backend).is_none() {
                    return Err(StoreError::Usage(format!(
                        "{place} holds no blocksnap store data: `recovery import` puts a store's \
                         config and keys back beside its data (to make a new store, use `init`)"
                    )));
                }
                let damaged = match &present {
                    Some(Err(_)) => backend.get(CONFIG).ok(),
                    _ => None,
                };
                same_store(&*backend, &place, &doc, file, damaged.as_deref())?;
                doc.config.clone()
            }
        };
        let store = Store::with_config(backend, place, config);
        let _lock = store.lock_exclusive("recovery import", progress)?;
        let mut report = RecoveryImportReport {
            store: Some(doc.store),
            ..RecoveryImportReport::default()
        };
        for a in &doc.accounts {
            store.put_back::<AccountDoc>(&Kind::Account.key(&a.name), &a.to_json(), &mut report)?;
        }
        for k in &doc.keys {
            store.put_back::<KeyDoc>(
                &Kind::Key.key(&k.id.to_string()),
                &k.to_json(),
                &mut report,
            )?;
        }
        // The config last: a store exists once it is complete.
        store.put_back::<ConfigDoc>(CONFIG, &doc.config.to_json(), &mut report)?;
        let (_, foreign) = snapshot_keys(&*store.backend().clone(), &doc);
        if !foreign.is_empty() {
            progress.message(&format!(
                "warning: some snapshots are under keys ({}) whose documents neither the store nor \
                 {} holds (was the file exported before they were made?): they stay unreadable \
                 until a key document is put back",
                foreign.into_iter().collect::<Vec<_>>().join(", "),
                file.display()
            ));
        }
        Ok(report)
    }

    /// Writes `bytes` to `key` unless a readable `D` is there; a damaged one is quarantined
    /// first.
    fn put_back<D: Document>(
        &self,
        key: &str,
        bytes: &[u8],
        report: &mut RecoveryImportReport,
    ) -> Result<()> {
        let shown = PathBuf::from(self.describe(key));
        if let Some(present) = self.get_object(key)? {
            let Err(problem) = D::from_json(&present) else {
                report.kept.push(shown);
                return Ok(());
            };
            let problem = problem.to_string();
            let to = self.quarantine(key)?;
            report.quarantined.push(QuarantinedDoc {
                from: shown.clone(),
                to: self.describe(&to).into(),
                problem,
            });
        }
        self.backend()
            .create(key, bytes)
            .map_err(self.object_error(key))?;
        self.doc_cache.forget(key);
        report.restored.push(shown);
        Ok(())
    }
}

/// How the snapshots in `backend` stand against the keys the recovery file and the store hold:
/// how many are under a known key, and the keys of the others.
fn snapshot_keys(backend: &dyn Backend, doc: &RecoveryFile) -> (usize, BTreeSet<String>) {
    let mut known: BTreeSet<Option<KeyId>> = doc.keys.iter().map(|k| Some(k.id)).collect();
    if !doc.config.encryption {
        known.insert(None);
    }
    let (mut readable, mut foreign) = (0usize, BTreeSet::new());
    let Ok(entries) = backend.list(&Kind::Snapshot.prefix()) else {
        return (readable, foreign);
    };
    for e in entries {
        let Ok(Ok(s)) = backend.get(&e.key).map(|b| SnapshotDoc::from_json(&b)) else {
            continue;
        };
        let in_store = s.key.is_some_and(|k| {
            backend
                .head(&Kind::Key.key(&k.to_string()))
                .is_ok_and(|h| h.is_some())
        });
        if known.contains(&s.key) || in_store {
            readable += 1;
        } else {
            foreign.insert(s.key.map_or("none (unencrypted)".into(), |k| k.to_string()));
        }
    }
    (readable, foreign)
}

/// What a store whose config is gone or damaged says about its own identity, from its data.
#[derive(Default)]
struct Evidence {
    /// Key ids its data names, each with the first object seen naming it: key documents,
    /// snapshot documents (live and in the trash), pack headers. Key ids are random: two
    /// stores never share one (`image copy` re-encrypts under the target's key).
    keys: BTreeMap<KeyId, String>,
    /// An object holding unencrypted data (a plain pack, a snapshot under no key).
    plain: Option<String>,
    /// Its readable account documents (their public keys are random per account).
    accounts: Vec<AccountDoc>,
    /// Store ids claimed for it, each with what says so: the `id` of a damaged config that still
    /// names one; the directory of an identity file whose public key is one of its accounts'
    /// (`$XDG_CONFIG_HOME/blocksnap/<store id>/<account>.key`).
    ids: Vec<(StoreId, String)>,
}

impl Evidence {
    fn gather(backend: &dyn Backend, place: &Place, damaged_config: Option<&[u8]>) -> Evidence {
        let mut ev = Evidence::default();
        let shown = |key: &str| describe(place, key);
        let docs = |kind: Kind| -> Vec<(String, Vec<u8>)> {
            backend.list(&kind.prefix()).map_or_else(
                |_| Vec::new(),
                |l| {
                    l.into_iter()
                        .filter(|m| kind.name_of(&m.key).is_some())
                        .filter_map(|m| backend.get(&m.key).ok().map(|b| (m.key, b)))
                        .collect()
                },
            )
        };
        let saw = |key: Option<KeyId>, at: String, ev: &mut Evidence| match key {
            Some(k) => {
                ev.keys.entry(k).or_insert(at);
            }
            None => {
                ev.plain.get_or_insert(at);
            }
        };
        for (key, bytes) in docs(Kind::Key) {
            if let Ok(k) = KeyDoc::from_json(&bytes) {
                saw(Some(k.id), shown(&key), &mut ev);
            }
        }
        for (key, bytes) in docs(Kind::Snapshot) {
            if let Ok(s) = SnapshotDoc::from_json(&bytes) {
                saw(s.key, shown(&key), &mut ev);
            }
        }
        for (key, bytes) in docs(Kind::Trash) {
            if let Ok(TrashDoc {
                snapshot: Some(s), ..
            }) = TrashDoc::from_json(&bytes)
            {
                saw(s.key, shown(&key), &mut ev);
            }
        }
        if let Ok(packs) = backend.list(&Kind::Pack.prefix()) {
            for m in packs
                .iter()
                .filter(|m| Kind::Pack.name_of(&m.key).is_some())
            {
                let header = backend.get_range(&m.key, 0, HEADER_LEN as u64);
                if let Ok(Ok(h)) = header.as_deref().map(PackHeader::decode) {
                    saw(h.key_id, shown(&m.key), &mut ev);
                }
            }
        }
        for (_, bytes) in docs(Kind::Account) {
            if let Ok(a) = AccountDoc::from_json(&bytes) {
                ev.accounts.push(a);
            }
        }
        if let Some(id) = damaged_config
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| v.get("id")?.as_str()?.parse::<StoreId>().ok())
        {
            ev.ids.push((
                id,
                format!("the damaged {} names store {id}", shown(CONFIG)),
            ));
        }
        ev.ids.extend(identity_dirs(&ev.accounts));
        ev
    }
}

/// The store ids of the identity directories under `$XDG_CONFIG_HOME/blocksnap/` that hold
/// the identity of one of `accounts`, each with the identity file.
fn identity_dirs(accounts: &[AccountDoc]) -> Vec<(StoreId, String)> {
    let mut out = Vec::new();
    if accounts.is_empty() {
        return out;
    }
    let Ok(dirs) = std::fs::read_dir(crate::repo::config_home().join("blocksnap")) else {
        return out;
    };
    for dir in dirs.flatten() {
        let Some(id) = dir
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<StoreId>().ok())
        else {
            continue;
        };
        for a in accounts {
            let file = dir.path().join(format!("{}.key", a.name));
            if identity_recipient(&file).as_deref() == Some(&*a.recipient) {
                out.push((
                    id,
                    format!(
                        "the identity of its account '{}' is {}, kept for store {id}",
                        a.name,
                        file.display()
                    ),
                ));
            }
        }
    }
    out
}

/// The public key of the age identity in `file`, if it holds one.
fn identity_recipient(file: &Path) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)
        .ok()?
        .take(64 << 10)
        .read_to_string(&mut text)
        .ok()?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))?;
    let identity: age::x25519::Identity = line.parse().ok()?;
    Some(identity.to_public().to_string())
}

/// Fails unless the store in `backend` (whose config is gone or damaged, `damaged_config`
/// its bytes if any) is the store `doc` was exported from, as far as its own data tells: an
/// account of the same name with another public key, a store id its identity files or its
/// damaged config name, encrypted data for an unencrypted config (or the reverse), or data
/// that names none of the file's keys and accounts, each refuses the file before anything is
/// written.
fn same_store(
    backend: &dyn Backend,
    place: &Place,
    doc: &RecoveryFile,
    file: &Path,
    damaged_config: Option<&[u8]>,
) -> Result<()> {
    let ev = Evidence::gather(backend, place, damaged_config);
    let refuse = |why: String| {
        Err(StoreError::Usage(format!(
            "{} is the recovery file of another store ({}) than the one in {place}: {why}; \
             nothing was changed. Import the export of this store",
            file.display(),
            doc.store
        )))
    };
    for (id, at) in &ev.ids {
        if *id != doc.store {
            let hint = if at.starts_with("the damaged") {
                " (if that id is what is damaged, move the config away and import again: the \
                 store's other data will decide)"
            } else {
                ""
            };
            return refuse(format!("{at}{hint}"));
        }
    }
    let mut positive = !ev.ids.is_empty();
    for a in &ev.accounts {
        match doc.accounts.iter().find(|f| f.name == a.name) {
            Some(f) if f.recipient != a.recipient => {
                return refuse(format!(
                    "account '{}' in the store has public key {}, in the file {}",
                    a.name, a.recipient, f.recipient
                ));
            }
            Some(_) => positive = true,
            None => {}
        }
    }
    match (doc.config.encryption, &ev.plain, ev.keys.iter().next()) {
        (true, Some(at), _) => {
            return refuse(format!(
                "its config encrypts, but {at} holds unencrypted data"
            ));
        }
        (false, _, Some((k, at))) => {
            return refuse(format!(
                "its config does not encrypt, but {at} is under key {k}"
            ));
        }
        _ => {}
    }
    let file_keys: BTreeSet<KeyId> = doc.keys.iter().map(|k| k.id).collect();
    positive |= ev.keys.keys().any(|k| file_keys.contains(k));
    if !positive && (!ev.keys.is_empty() || !ev.accounts.is_empty()) {
        let mut named: Vec<String> = ev
            .keys
            .iter()
            .map(|(k, at)| format!("{k} ({at})"))
            .collect();
        named.extend(ev.accounts.iter().map(|a| format!("account '{}'", a.name)));
        return refuse(format!(
            "the store's data names {}, and the file holds none of them",
            named.join(", ")
        ));
    }
    Ok(())
}
