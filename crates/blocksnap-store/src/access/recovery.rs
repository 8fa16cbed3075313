//! `recovery export|import`: what a store needs besides an identity to be read again.
//!
//! The identity unwraps a grant, but the grant lives in the store, in `keys/KEY-ID.json`; the
//! store's settings (chunker, encryption, id) live in `config`; the accounts' public keys in
//! `accounts/`. Losing any of them makes data unreadable even with the identity. `recovery
//! export FILE` writes the three kinds into one file (mode 0600: it holds only public keys and
//! wrapped data keys, but it is the store's map); `recovery import FILE` puts back those that
//! are missing or damaged (a damaged one goes to `quarantine/` first) and never replaces one
//! that reads. It works on a store whose `config` is gone, which nothing else can open.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use blocksnap_backend::Backend;

use blocksnap_manifest::{AccountDoc, ConfigDoc, Document, KeyDoc, KeyId, SnapshotDoc, StoreId};
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
                same_store_keys(&*backend, &place, &doc, file)?;
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

/// Fails when the store in `backend` (whose config is gone or damaged) has snapshots and none
/// is under a key the file or the store holds: the file is of another store, and its config
/// would read none of this data.
fn same_store_keys(
    backend: &dyn Backend,
    place: &Place,
    doc: &RecoveryFile,
    file: &Path,
) -> Result<()> {
    let (readable, foreign) = snapshot_keys(backend, doc);
    if readable == 0 && !foreign.is_empty() {
        return Err(StoreError::Usage(format!(
            "the snapshots in {place} are under keys ({}) that {} does not hold: it is the recovery \
             file of another store; nothing was changed",
            foreign.into_iter().collect::<Vec<_>>().join(", "),
            file.display()
        )));
    }
    Ok(())
}
