//! Images and image copy over the memory backend: an image of two disks rebuilds byte-identical
//! with their common content stored once, keeps its snapshots from deletion, goes to the trash
//! and back whole; a copy into another store is re-encrypted under that store's key (no chunk id,
//! pack or key shared), rebuilds byte-identical there, and a second copy moves nothing.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::PathBuf;

use crate::support::*;
use blocksnap_backend::MemoryBackend;
use blocksnap_manifest::ChunkId;
use blocksnap_store::{
    ChunkerKind, CopyOptions, ErrorKind, ImageOptions, ImageReport, NoProgress, RestoreOptions,
    TAG_COPIED_FROM,
};

const MIB: usize = 1 << 20;

/// The two disks of the test image: root, and a data disk sharing root's first MiB.
fn disks() -> (Vec<u8>, Vec<u8>) {
    let root = disk_image(2 * MIB, 1);
    let data = [root[..MIB].to_vec(), random_bytes(MIB, 2)].concat();
    (root, data)
}

fn create_web(m: &Mem) -> ImageReport {
    let (root, data) = disks();
    let opts = ImageOptions {
        name: "web".into(),
        volumes: vec![
            ("/dev/vda".into(), m.file("root.img", &root)),
            ("/dev/vdb".into(), m.file("data.img", &data)),
        ],
        ..ImageOptions::default()
    };
    m.store.create_image(&m.access, &opts, &NoProgress).unwrap()
}

/// Rebuilds `image` of `m`'s store (or `store`) by `access` into a new directory; returns
/// (vda, vdb).
fn rebuild(
    m: &Mem,
    store: &blocksnap_store::Store,
    access: &blocksnap_store::Access,
    image: &str,
) -> (Vec<u8>, Vec<u8>) {
    let out: PathBuf = m.path(&format!("rebuild-{}", random_name()));
    std::fs::create_dir(&out).unwrap();
    let r = store
        .rebuild_image(access, image, &out, &RestoreOptions::default(), &NoProgress)
        .unwrap();
    assert_eq!(r.volumes.len(), 2);
    (
        std::fs::read(out.join("vda.img")).unwrap(),
        std::fs::read(out.join("vdb.img")).unwrap(),
    )
}

/// Every chunk id in the packs of `m`'s store, read with its default key.
fn chunk_ids(m: &Mem) -> HashSet<ChunkId> {
    m.trailers()
        .into_iter()
        .flat_map(|(_, e)| e.into_iter().map(|e| e.id))
        .collect()
}

#[test]
fn an_image_of_two_disks_rebuilds_byte_identical_and_stores_common_content_once() {
    let m = Mem::new();
    let (root, data) = disks();
    let r = create_web(&m);
    assert_eq!(r.image.name, "web");
    assert_eq!(r.image.owner, "alice");
    assert_eq!(r.image.root_device, "/dev/vda");
    assert_eq!(r.image.key, m.default_key());
    assert_eq!(r.snapshots.len(), 2);
    let new: u64 = r.snapshots.iter().map(|s| s.bytes_new).sum();
    let data_bytes: u64 = r
        .snapshots
        .iter()
        .map(|s| s.bytes_read - s.bytes_hole)
        .sum();
    assert!(
        new + (MIB as u64) / 2 < data_bytes,
        "the shared MiB is stored once: {new} new of {data_bytes}"
    );
    let id = r.image.id.to_string();
    assert_eq!(m.store.resolve_image("web").unwrap().id, r.image.id);
    assert_eq!(m.store.resolve_image(&id[..8]).unwrap().id, r.image.id);
    assert_eq!(m.store.list_images().unwrap().len(), 1);
    assert_eq!(
        rebuild(&m, &m.store, &m.access, "web"),
        (root.clone(), data.clone())
    );

    // Its snapshots cannot be deleted while it maps them.
    let snap = r.snapshots[0].id.to_string();
    let (kind, msg) = kind_of(m.store.delete_snapshot(&m.access, &snap));
    assert_eq!(kind, ErrorKind::Usage, "{msg}");
    assert!(msg.contains("web") && msg.contains("deregister"), "{msg}");

    // Deregistered with its snapshots, to the trash; back from it whole.
    let d = m.store.deregister_image(&m.access, "web", true).unwrap();
    assert_eq!(d.snapshots_deleted.len(), 2);
    assert!(m.store.list_images().unwrap().is_empty());
    assert!(m.store.list_snapshots().unwrap().is_empty());
    m.store.restore_trash(&id).unwrap();
    assert_eq!(m.store.list_snapshots().unwrap().len(), 2);
    assert_eq!(rebuild(&m, &m.store, &m.access, "web"), (root, data));
}

#[test]
fn a_copy_into_another_store_is_re_encrypted_and_a_second_copy_moves_nothing() {
    let src = Mem::new();
    let r = create_web(&src);
    let (root, data) = disks();
    let mut opts = small_chunks(ChunkerKind::Cdc);
    opts.account = "carol".into();
    let dst = Mem::in_backend(std::sync::Arc::new(MemoryBackend::new()), &mut opts);

    let copy = src
        .store
        .copy_image(
            &src.access,
            "web",
            &dst.store,
            &dst.access,
            &CopyOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(copy.image.owner, "carol");
    assert_eq!(copy.image.key, dst.default_key());
    assert_ne!(copy.image.key, src.default_key());
    assert_ne!(copy.image.id, r.image.id);
    assert_eq!(
        rebuild(&dst, &dst.store, &dst.access, "web"),
        (root.clone(), data.clone())
    );

    // Re-encrypted: the target's chunk ids are its own key's, no pack is shared, and the
    // source's key cannot open the target's packs.
    let (src_ids, dst_ids) = (chunk_ids(&src), chunk_ids(&dst));
    assert!(!dst_ids.is_empty());
    assert!(src_ids.is_disjoint(&dst_ids), "keyed ids differ");
    let src_packs: HashSet<String> = src.pack_objects().into_iter().map(|(k, _)| k).collect();
    assert!(
        dst.pack_objects()
            .iter()
            .all(|(k, _)| !src_packs.contains(k))
    );
    let src_codec = src.store.codec(&src.access, src.default_key()).unwrap();
    for (key, bytes) in dst.pack_objects() {
        assert!(
            blocksnap_pack::read_trailer(Cursor::new(&bytes), |_| Some(&src_codec)).is_err(),
            "the source key opens {key}"
        );
    }
    for (s, orig) in copy.snapshots.iter().zip(&r.snapshots) {
        let doc = dst.store.resolve_snapshot(&s.id.to_string()).unwrap();
        assert_eq!(doc.owner, "carol");
        assert_eq!(
            doc.tags.get(TAG_COPIED_FROM),
            Some(&format!("{}/{}", src.store.config().id, orig.id))
        );
    }
    let check = dst.store.check(&dst.access, true, &NoProgress).unwrap();
    assert!(check.ok, "{check:#?}");

    // Again, under another name: the copies are reused, nothing is written.
    let packs = dst.pack_objects();
    let again = src
        .store
        .copy_image(
            &src.access,
            "web",
            &dst.store,
            &dst.access,
            &CopyOptions {
                name: Some("web2".into()),
                ..CopyOptions::default()
            },
            &NoProgress,
        )
        .unwrap();
    let first: Vec<_> = copy.snapshots.iter().map(|s| s.id).collect();
    let second: Vec<_> = again.snapshots.iter().map(|s| s.id).collect();
    assert_eq!(first, second, "the same copied snapshots");
    assert_eq!(dst.pack_objects(), packs, "no pack written");
    assert_eq!(rebuild(&dst, &dst.store, &dst.access, "web2"), (root, data));
}

#[test]
fn a_copy_within_one_store_under_another_key_is_readable_under_that_key_only() {
    let m = Mem::new();
    create_web(&m);
    let (root, data) = disks();
    let other = m.store.create_key(&m.access, "other").unwrap();
    let copy = m
        .store
        .copy_image(
            &m.access,
            "web",
            &m.store,
            &m.access,
            &CopyOptions {
                key: Some("other".into()),
                name: Some("web-other".into()),
            },
            &NoProgress,
        )
        .unwrap();
    assert_eq!(copy.image.key, Some(other.id));
    for s in &copy.snapshots {
        assert_eq!(s.key, Some(other.id));
        assert!(s.chunks_new > 0, "new ids under the other key: {s:?}");
    }
    assert_eq!(rebuild(&m, &m.store, &m.access, "web-other"), (root, data));
    // An account granted only the default key can launch the original but not the copy.
    let bob = m.add_account("bob");
    m.store
        .grant_key(&m.access, "default", "bob", None)
        .unwrap();
    for name in ["web", "web-other"] {
        m.store
            .share_image(
                &m.access,
                name,
                &blocksnap_store::Audience::Account("bob".into()),
            )
            .unwrap();
    }
    rebuild(&m, &m.store, &bob, "web");
    let doc = m.store.resolve_image("web-other").unwrap();
    let (kind, msg) = kind_of(m.store.check_launch(&bob, &doc));
    assert_eq!(kind, ErrorKind::Denied, "{msg}");
    assert!(msg.contains("other"), "{msg}");
    let check = m.store.check(&m.access, true, &NoProgress).unwrap();
    assert!(check.ok, "{check:#?}");
}
