//! The command line as the user typed it (clap), before it becomes store options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Snapshot raw disk images into a deduplicating, encrypted store, and rebuild them exactly.
#[derive(Debug, Parser)]
#[command(name = "blocksnap", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The store: a local directory, or file:///PATH (other URLs are refused until a backend
    /// serves them) [default: $XDG_DATA_HOME/blocksnap/store, created on first use].
    #[arg(long, global = true, env = "BLOCKSNAP_STORE", value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// The account that acts [default: the account created with the store]. Give it before the
    /// command (`blocksnap --account bob image rebuild …`): after `image share` and `unshare`,
    /// `--account` names the account being shared with.
    #[arg(long, env = "BLOCKSNAP_ACCOUNT", value_name = "NAME")]
    pub account: Option<String>,
    /// The account's secret identity file [default: $XDG_CONFIG_HOME/blocksnap/<store id>/<account>.key].
    #[arg(long, global = true, env = "BLOCKSNAP_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Print one JSON document on stdout and nothing else there.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress and no notes on stderr; errors still show.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a store with its first account (--account) and a key named `default`.
    Init(InitArgs),
    /// Create and list accounts (identities that hold keys).
    #[command(subcommand)]
    Account(AccountCmd),
    /// Create, list, grant and revoke data keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Register disk images and block devices by name, with tags.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Deleted snapshots and images, restorable until the trash retention ends (default 7 days).
    #[command(subcommand)]
    Trash(TrashCmd),
    /// Lifecycle policies: scheduled snapshots of tagged volumes, with retention.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Take, list, show, restore, diff and delete snapshots of disk images.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Machine images: named sets of snapshots by device, with launch permissions and a key.
    #[command(subcommand)]
    Image(ImageCmd),
    /// Serve a snapshot to other programs without restoring it first.
    #[command(subcommand)]
    Serve(ServeCmd),
    /// Rebuild derived state from the packs; quarantine damaged documents.
    #[command(subcommand)]
    Repair(RepairCmd),
    /// Export and import what a store needs besides the identities to be read: its config,
    /// account and key documents.
    #[command(subcommand)]
    Recovery(RecoveryCmd),
    /// Delete what no snapshot (live or in the trash) references, and rewrite packs that are
    /// mostly garbage. Removes expired trash entries first.
    Prune {
        /// Show what would be reclaimed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rewrite a pack when more than this fraction of it is garbage.
        #[arg(long, value_name = "FRACTION", default_value_t = 0.5)]
        repack_threshold: f64,
    },
    /// Verify the store: documents, pack trailers, the index, every snapshot's chunks.
    /// Exits 4 when it finds damage, and lists the packs, chunks, snapshots and images affected
    /// and the steps that heal it; exits 5 when it found none but could not verify everything
    /// (no grant on a key, a pack it could not read), and says what was not verified.
    Check {
        /// Also decrypt every chunk of every pack and verify it against its id.
        #[arg(long)]
        read_data: bool,
    },
    /// Remove lock objects that no running command holds: those of this host whose process is
    /// gone, and damaged ones. (Locks left by killed commands of this host are also removed
    /// automatically by the next command.)
    Unlock {
        /// Also remove the locks of other hosts sharing the store. Use it only when sure that
        /// those blocksnap processes are gone (their host crashed or was switched off): a
        /// prune running there could otherwise delete data a snapshot here still needs.
        #[arg(long)]
        all: bool,
    },
    /// Measure this machine: each stage's throughput on one core and on all cores, then an
    /// end-to-end snapshot, incremental snapshot and restore of a generated image.
    #[command(long_about = BENCH_ABOUT)]
    Bench(BenchArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ChunkerArg {
    /// FastCDC 2020: content-defined boundaries, robust to shifted data.
    Cdc,
    /// Fixed-size chunks aligned to the start of the disk.
    Fixed,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Store chunks unencrypted, with plain BLAKE3 ids.
    #[arg(long)]
    pub no_encryption: bool,
    /// How to cut images into chunks.
    #[arg(long, value_enum, default_value = "cdc")]
    pub chunker: ChunkerArg,
    /// Average chunk size for cdc (a power of two), exact size for fixed: 4KiB to 4MiB.
    #[arg(long, value_name = "SIZE", value_parser = crate::parse::size_u32, default_value = "32KiB")]
    pub chunk_size: u32,
    /// The first account's name [default: $USER].
    #[arg(long = "account", value_name = "NAME")]
    pub account: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// Snapshot a disk image or block device, storing only chunks the store lacks.
    Create(CreateArgs),
    /// List snapshots, oldest first.
    List(ListArgs),
    /// Show one snapshot.
    Show {
        /// Snapshot id or unique prefix.
        snapshot: String,
    },
    /// The byte ranges whose content differs between two snapshots (of the same disk, or of
    /// any two disks), merged and sorted. Equal chunk ids are not read; the rest is compared
    /// byte for byte, so the ranges are exact (also across keys).
    Diff {
        /// The older snapshot (id or unique prefix).
        #[arg(value_name = "SNAPSHOT_A")]
        a: String,
        /// The newer snapshot (id or unique prefix).
        #[arg(value_name = "SNAPSHOT_B")]
        b: String,
    },
    /// Move a snapshot to the trash (restorable with `trash restore` until it expires).
    Delete {
        /// Snapshot id or unique prefix.
        snapshot: String,
    },
    /// Rebuild a snapshot's image as a sparse file (or onto a block device), verifying every chunk.
    ///
    /// OUTPUT is a new file; an existing regular file is replaced, and a block device written
    /// over, only with --force. A block device is opened exclusively (a mounted one is refused)
    /// and must be at least the snapshot's size. Directories, character devices (/dev/null),
    /// FIFOs, sockets and new names under /dev are refused. A symbolic link is followed.
    Restore {
        /// Snapshot id or unique prefix.
        snapshot: String,
        /// The file (or block device) to write.
        output: PathBuf,
        /// Replace OUTPUT if it is an existing file, or write over it if it is a block device.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The disk image or block device, or the name of a volume registered with `volume add`.
    #[arg(value_name = "PATH|VOLUME")]
    pub source: PathBuf,
    /// The volume's name [default: the file name of PATH].
    #[arg(long, value_name = "NAME")]
    pub volume: Option<String>,
    /// The key to encrypt with, by name or id [default: `default`].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// A tag for the snapshot; repeat for more.
    #[arg(long = "tag", value_name = "K=V", value_parser = crate::parse::tag)]
    pub tags: Vec<(String, String)>,
    /// Free text describing the snapshot.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub description: String,
    /// PATH is the volume's disk, moved, renamed or now on another host: accept it although
    /// it is not where the volume's snapshots were taken from, and record the new place.
    #[arg(long)]
    pub source_moved: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only snapshots of this volume.
    #[arg(long, value_name = "NAME")]
    pub volume: Option<String>,
    /// Only snapshots carrying this tag; repeat to require several.
    #[arg(long = "tag", value_name = "K=V", value_parser = crate::parse::tag)]
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
pub enum RepairCmd {
    /// Rebuild the dedup index from the pack trailers alone.
    Index,
    /// Move every damaged document (one that is not valid JSON or not a valid document) into
    /// quarantine/ in the store, keeping it. Until then prune refuses to run. Documents of a
    /// newer format stay: a newer blocksnap reads them.
    Documents {
        /// Say what would be moved; move nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Heal the store after packs were damaged or deleted: the index forgets the chunks of
    /// missing packs; the intact chunks of each damaged pack are verified and moved to new
    /// packs, the rest forgotten, and the pack renamed to packs/XX/ID.damaged. The next
    /// snapshot of a source that holds the lost chunks stores them again.
    Packs {
        /// Also decrypt and verify every record, to find damage inside packs whose trailer is
        /// intact (what `check --read-data` finds).
        #[arg(long)]
        read_data: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum RecoveryCmd {
    /// Write the store's config, account documents and key documents into FILE (mode 0600).
    /// Keep it with the identities: without these documents the data cannot be read, even with
    /// an identity. Export again after `account create` and `key create|grant|revoke`.
    Export {
        /// The file to write (it must not exist).
        file: PathBuf,
    },
    /// Put back, from an exported FILE, the config, account and key documents that are
    /// missing or damaged in the store (damaged ones are moved to quarantine/ first). One that
    /// reads is never replaced. Works on a store that lost its config.
    Import {
        /// The file `recovery export` wrote.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Create an account: writes its secret identity (mode 0600) to --identity or the default
    /// path, and records its public key in the store.
    Create {
        /// The account's name.
        name: String,
    },
    /// List the store's accounts.
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a data key, granted to the acting account.
    Create {
        /// The key's name.
        name: String,
    },
    /// List keys and the accounts holding grants on them.
    List,
    /// Grant a key to an account: wraps the data key to that account's public key. Only an
    /// account holding the key can grant it.
    Grant {
        /// Key name or id.
        key: String,
        /// The account to grant it to.
        #[arg(id = "grantee", value_name = "ACCOUNT")]
        account: String,
    },
    /// Remove an account's grant. Data it already read stays read; rotate to a new key
    /// (`key create`, then `snapshot create --key`) to protect future snapshots.
    Revoke {
        /// Key name or id.
        key: String,
        /// The account whose grant is removed.
        #[arg(id = "grantee", value_name = "ACCOUNT")]
        account: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Register a volume: `snapshot create NAME` then snapshots PATH under that name.
    Add {
        /// The volume's name.
        name: String,
        /// The disk image or block device.
        path: PathBuf,
        /// A tag for the volume; repeat for more (policies select volumes by tag).
        #[arg(long = "tag", value_name = "K=V", value_parser = crate::parse::tag)]
        tags: Vec<(String, String)>,
    },
    /// List registered volumes.
    List,
}

#[derive(Debug, Subcommand)]
pub enum TrashCmd {
    /// List deleted snapshots and images, and when they expire.
    List,
    /// Bring a deleted snapshot (or image, with its trashed snapshots) back.
    Restore {
        /// The id (snap-… or img-…) or a unique prefix of it.
        id: String,
    },
    /// Remove deleted snapshots for good (their data is reclaimed by prune).
    Empty {
        /// Only those whose retention has ended.
        #[arg(long)]
        expired: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Create a policy: snapshot every volume carrying any target tag on each schedule.
    ///
    /// A schedule is `[NAME:] every N(h|d|w|mo|y) [at HH:MM] keep (N | N(d|w|mo|y))`, e.g.
    /// "daily: every 1d at 03:00 keep 7" or "every 1mo keep 1y"; times are UTC.
    Create {
        /// The policy's name.
        name: String,
        /// A volume tag that selects volumes; repeat for more (any one matches).
        #[arg(long = "target-tag", value_name = "K=V", value_parser = crate::parse::tag, required = true)]
        target_tags: Vec<(String, String)>,
        /// A schedule; repeat for more, one to four in all.
        #[arg(long = "schedule", value_name = "SPEC", required = true)]
        schedules: Vec<String>,
    },
    /// List policies.
    List,
    /// Show one policy.
    Show {
        /// The policy's name.
        name: String,
    },
    /// Delete a policy (the snapshots it took stay).
    Delete {
        /// The policy's name.
        name: String,
    },
    /// Take the snapshots that are due and expire old ones (run it from cron or a timer).
    Run {
        /// Act as if the time were this (RFC 3339) [default: now].
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Snapshot each volume (several at once) and record them as a new image you own.
    Create {
        /// The image's name, unique in the store.
        name: String,
        /// A device and the disk image, block device or registered volume it is made from;
        /// repeat for each device (`--volume /dev/sda=root.img --volume /dev/sdb=data.img`).
        #[arg(long = "volume", value_name = "DEVICE=PATH", value_parser = crate::parse::mapping, required = true)]
        volumes: Vec<(String, String)>,
        /// The boot device [default: the first --volume's].
        #[arg(long, value_name = "DEVICE")]
        root_device: Option<String>,
        /// The key to encrypt with, by name or id [default: `default`].
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// A tag for the image and its snapshots; repeat for more.
        #[arg(long = "tag", value_name = "K=V", value_parser = crate::parse::tag)]
        tags: Vec<(String, String)>,
        /// Free text describing the image.
        #[arg(long, value_name = "TEXT", default_value = "")]
        description: String,
        /// Each PATH is its volume's disk, moved, renamed or now on another host (see
        /// `snapshot create --help`).
        #[arg(long)]
        source_moved: bool,
    },
    /// Record existing snapshots (all under one key) as a new image you own.
    Register {
        /// The image's name, unique in the store.
        name: String,
        /// A device and its snapshot (id or unique prefix); repeat for each device.
        #[arg(long = "volume", value_name = "DEVICE=SNAPSHOT", value_parser = crate::parse::mapping, required = true)]
        volumes: Vec<(String, String)>,
        /// The boot device [default: the first --volume's].
        #[arg(long, value_name = "DEVICE")]
        root_device: Option<String>,
    },
    /// List the images you may launch: your own, those shared with you, public ones.
    List {
        /// Every image of the store, whoever may launch it.
        #[arg(long)]
        all: bool,
    },
    /// Show one image.
    Show {
        /// Image name, id or unique id prefix.
        image: String,
    },
    /// Write every device of an image into OUTDIR/<device's last path part>.img, each
    /// byte-identical and sparse. Needs the launch permission and a grant on the image's key.
    Rebuild {
        /// Image name, id or unique id prefix.
        image: String,
        /// The directory to write the devices into (created if missing).
        outdir: PathBuf,
        /// Replace existing files in OUTDIR (or write over the block devices they link to).
        /// Every output is checked before the first is written.
        #[arg(long)]
        force: bool,
    },
    /// Let an account (or every account of the store) launch the image. Owner only. An
    /// encrypted image also needs a grant on its key: `blocksnap key grant KEY ACCOUNT`.
    Share {
        /// Image name, id or unique id prefix.
        image: String,
        #[command(flatten)]
        audience: AudienceArgs,
    },
    /// Take launch permission away. Owner only. To stop an account from reading data it may
    /// already have a grant for, revoke the key too (`key revoke`), and see `key revoke --help`.
    Unshare {
        /// Image name, id or unique id prefix.
        image: String,
        #[command(flatten)]
        audience: AudienceArgs,
    },
    /// Copy an image into another store, re-encrypting under the target's key. Only chunks the
    /// target lacks are written; snapshots already copied there are reused.
    Copy {
        /// Image name, id or unique id prefix.
        image: String,
        /// The target store (it may be this store: then the copy is re-encrypted under --key).
        #[arg(long, value_name = "STORE")]
        to: PathBuf,
        /// The target's key, by name or id [default: the target's `default`].
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// The copy's name [default: the image's name].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The account that owns the copy in the target [default: the target's first account].
        #[arg(long, value_name = "NAME", env = "BLOCKSNAP_TO_ACCOUNT")]
        to_account: Option<String>,
        /// That account's identity file [default: its default path for the target store].
        #[arg(long, value_name = "FILE", env = "BLOCKSNAP_TO_IDENTITY")]
        to_identity: Option<PathBuf>,
    },
    /// Remove an image (to the trash: `trash restore` brings it back until it expires). Owner only.
    Deregister {
        /// Image name, id or unique id prefix.
        image: String,
        /// Also move its snapshots to the trash, except those another image still uses.
        #[arg(long)]
        delete_snapshots: bool,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct AudienceArgs {
    /// The account to share with (or unshare from).
    #[arg(long, value_name = "ACCOUNT")]
    pub account: Option<String>,
    /// Every account of the store.
    #[arg(long)]
    pub public: bool,
}

const BENCH_ABOUT: &str = "\
Measure this machine: each stage's throughput on one core and on all cores, then an end-to-end \
snapshot, incremental snapshot and restore of a generated image. Needs no store.

Stages run on a sample of generated data with a default store's settings: read (the \
snapshot reader's positioned reads of a file in the page cache), FastCDC and fixed-size chunking \
(32 KiB), keyed BLAKE3 chunk ids, index (a sled lookup and an insert per chunk), encode (zstd \
level 3 + \
AES-256-GCM), pack-write (records appended to a pack file with its BLAKE3 id, no fsync), and \
decode + verify.

End to end: a SIZE-byte image (45% text-like, 30% random, 10% written zeros, 15% unallocated) is \
written to a temporary directory under TMPDIR, snapshotted into a fresh encrypted store, changed \
in about 2% of its bytes and snapshotted again, and that snapshot is restored and compared byte \
for byte with the image. The directory is removed afterwards; it needs about 3 x SIZE of space. \
The image is read from the page cache (it was just written), so disk reads are not measured; \
pack and restore fsyncs are. CORES is the CPU time a run used over its wall time.

Stage limit: the snapshot throughput the work of its stages allows, 1 / (1/read + 1/chunk + \
1/hash + 1/index + 1/encode + 1/pack-write) with each stage measured on all cores: the per-byte \
costs summed, as if the stages shared the cores perfectly with no fsync or waiting. The compute \
limit is the same sum over chunk, hash and encode alone. Both count data bytes (holes and zero \
runs cost no stage work), and so do the ratios of the measured snapshot to them. The restore \
limit is decode + verify on all cores.";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Size of the generated test image (1MiB to 1TiB).
    #[arg(long, value_name = "SIZE", value_parser = crate::parse::size, default_value = "256MiB")]
    pub size: u64,
    /// Minimum time of each stage measurement, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 0.5)]
    pub stage_seconds: f64,
}

#[derive(Debug, Subcommand)]
pub enum ServeCmd {
    /// Export a snapshot read-only over NBD: usable at once, its chunks fetched, verified and
    /// decoded as they are read (`qemu-img convert nbd://127.0.0.1:10809 disk.img`, `nbd-client`,
    /// or a VM booting from it). Serves one client at a time until stopped (Ctrl-C).
    Nbd {
        /// A snapshot (id or unique prefix), or IMAGE:DEVICE of an image you may launch.
        #[arg(value_name = "SNAPSHOT|IMAGE:DEVICE")]
        what: String,
        /// The address to listen on (port 0 picks a free one).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10809")]
        listen: String,
    },
}
