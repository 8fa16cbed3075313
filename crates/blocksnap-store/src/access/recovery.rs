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
use std::fs;
use std::path::{Path, PathBuf};

use blocksnap_manifest::{AccountDoc, ConfigDoc, Document, KeyDoc, KeyId, SnapshotDoc, StoreId};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::progress::Progress;
use crate::repo::documents::QuarantinedDoc;
use crate::repo::{DamagedDoc, Store, store_data_held};

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
        let mut skipped = self.skipped_in(&self.root().join("accounts"));
        skipped.extend(self.skipped_in(&self.root().join("keys")));
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
        let cfg_path = root.join("config");
        let present = cfg_path
            .is_file()
            .then(|| fsutil::read(&cfg_path).map(|b| ConfigDoc::from_json(&b)))
            .transpose()?;
        let config = match present {
            Some(Ok(c)) if c.id != doc.store => {
                return Err(StoreError::Usage(format!(
                    "{} is the recovery file of store {}, but the store at {} is {}; nothing was \
                     changed",
                    file.display(),
                    doc.store,
                    root.display(),
                    c.id
                )));
            }
            Some(Ok(c)) => c,
            _ => {
                if present.is_none() && store_data_held(root).is_none() {
                    return Err(StoreError::Usage(format!(
                        "{} holds no blocksnap store data: `recovery import` puts a store's \
                         config and keys back beside its data (to make a new store, use `init`)",
                        root.display()
                    )));
                }
                same_store_keys(root, &doc, file)?;
                doc.config.clone()
            }
        };
        let store = Store::with_config(root, config);
        let _lock = store.lock_exclusive("recovery import", progress)?;
        let mut report = RecoveryImportReport {
            store: Some(doc.store),
            ..RecoveryImportReport::default()
        };
        for a in &doc.accounts {
            store.put_back::<AccountDoc>(
                &store.account_path(&a.name),
                &a.to_json(),
                &mut report,
            )?;
        }
        for k in &doc.keys {
            store.put_back::<KeyDoc>(&store.key_path(k.id), &k.to_json(), &mut report)?;
        }
        // The config last: a store exists once it is complete.
        store.put_back::<ConfigDoc>(&cfg_path, &doc.config.to_json(), &mut report)?;
        let (_, foreign) = snapshot_keys(root, &doc);
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

    /// Writes `bytes` to `path` unless a readable `D` is there; a damaged one is quarantined
    /// first.
    fn put_back<D: Document>(
        &self,
        path: &Path,
        bytes: &[u8],
        report: &mut RecoveryImportReport,
    ) -> Result<()> {
        if path.is_file() {
            let Err(problem) = D::from_json(&fsutil::read(path)?) else {
                report.kept.push(path.to_path_buf());
                return Ok(());
            };
            let problem = problem.to_string();
            let to = self.quarantine(path)?;
            report.quarantined.push(QuarantinedDoc {
                from: path.to_path_buf(),
                to,
                problem,
            });
        }
        fsutil::write_atomic(path, bytes, 0o644)?;
        report.restored.push(path.to_path_buf());
        Ok(())
    }
}

/// How the snapshots at `root` stand against the keys the recovery file and the store hold:
/// how many are under a known key, and the keys of the others.
fn snapshot_keys(root: &Path, doc: &RecoveryFile) -> (usize, BTreeSet<String>) {
    let mut known: BTreeSet<Option<KeyId>> = doc.keys.iter().map(|k| Some(k.id)).collect();
    if !doc.config.encryption {
        known.insert(None);
    }
    let (mut readable, mut foreign) = (0usize, BTreeSet::new());
    let Ok(entries) = fs::read_dir(root.join("snapshots")) else {
        return (readable, foreign);
    };
    for e in entries.filter_map(std::result::Result::ok) {
        let Ok(Ok(s)) = fs::read(e.path()).map(|b| SnapshotDoc::from_json(&b)) else {
            continue;
        };
        let in_store = s
            .key
            .is_some_and(|k| root.join("keys").join(format!("{k}.json")).is_file());
        if known.contains(&s.key) || in_store {
            readable += 1;
        } else {
            foreign.insert(s.key.map_or("none (unencrypted)".into(), |k| k.to_string()));
        }
    }
    (readable, foreign)
}

/// Fails when the store at `root` (whose config is gone or damaged) has snapshots and none is
/// under a key the file or the store holds: the file is of another store, and its config would
/// read none of this data.
fn same_store_keys(root: &Path, doc: &RecoveryFile, file: &Path) -> Result<()> {
    let (readable, foreign) = snapshot_keys(root, doc);
    if readable == 0 && !foreign.is_empty() {
        return Err(StoreError::Usage(format!(
            "the snapshots in {} are under keys ({}) that {} does not hold: it is the recovery \
             file of another store; nothing was changed",
            root.display(),
            foreign.into_iter().collect::<Vec<_>>().join(", "),
            file.display()
        )));
    }
    Ok(())
}
