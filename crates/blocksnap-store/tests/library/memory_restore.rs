//! Restore over the memory backend: byte-identical volumes of every shape (odd sizes, holes,
//! empty), lookup by prefix with typed errors, an existing file replaced only when asked, damage
//! (a lost pack, a flipped byte) refused with an error naming it and no output left behind, and
//! diff reporting exactly the changed bytes.

use std::os::unix::fs::MetadataExt;

use crate::support::*;
use blocksnap_backend::Backend;
use blocksnap_store::{ErrorKind, NoProgress, RestoreOptions};

#[test]
fn volumes_of_every_shape_restore_byte_identical() {
    let m = Mem::new();
    let shapes: Vec<(&str, Vec<u8>)> = vec![
        ("odd", disk_image(1_000_003, 1)),
        ("tiny", b"x".to_vec()),
        ("empty", Vec::new()),
        ("zeros", vec![0u8; 3 << 20]),
        ("mixed", disk_image(4 << 20, 2)),
    ];
    for (name, data) in &shapes {
        let r = m.snapshot(&format!("{name}.img"), data, name);
        assert_eq!(r.size, data.len() as u64);
        assert_eq!(&m.restored(&r.id.to_string()), data, "volume {name}");
    }
    // A sparse source: holes are read as zeros and restored as holes.
    let sparse = m.path("sparse.img");
    let f = std::fs::File::create(&sparse).unwrap();
    f.set_len(8 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&random_bytes(64 << 10, 3), 5 << 20).unwrap();
    drop(f);
    let r = m
        .store
        .snapshot(
            &m.access,
            &blocksnap_store::SnapshotOptions {
                source: sparse.clone(),
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap();
    assert_eq!(r.bytes_hole, (8 << 20) - (64 << 10), "{r:?}");
    let out = m.path("sparse-out.img");
    let rr = m
        .store
        .restore(&m.access, &r.id.to_string(), &out, &NoProgress)
        .unwrap();
    assert_eq!(rr.bytes_written, 64 << 10);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&sparse).unwrap()
    );
    assert!(
        std::fs::metadata(&out).unwrap().blocks() * 512 < 1 << 20,
        "holes stay holes"
    );
}

#[test]
fn snapshots_resolve_by_prefix_with_typed_errors() {
    let m = Mem::new();
    let a = m.snapshot("a.img", &disk_image(100_000, 1), "a");
    let id = a.id.to_string();
    assert_eq!(m.restored(&id[..10]), disk_image(100_000, 1));
    assert_eq!(m.restored(&id["snap-".len()..]), disk_image(100_000, 1));
    // 16 more snapshots: two ids then share their first hex digit.
    let mut ids = vec![id.clone()];
    for i in 0..16 {
        ids.push(m.snapshot("b.img", &[i as u8; 10], "b").id.to_string());
    }
    let (x, y) = ids
        .iter()
        .enumerate()
        .find_map(|(n, x)| {
            ids[n + 1..]
                .iter()
                .find(|y| y[..6] == x[..6])
                .map(|y| (x, y))
        })
        .expect("pigeonhole");
    let out = m.path("x.img");
    let (kind, msg) = kind_of(m.store.restore(&m.access, &x[..6], &out, &NoProgress));
    assert_eq!(kind, ErrorKind::Ambiguous, "{msg}");
    assert!(
        msg.contains(x) && msg.contains(y),
        "lists the candidates: {msg}"
    );
    let (kind, msg) = kind_of(m.store.restore(&m.access, "snap-zz", &out, &NoProgress));
    assert_eq!(kind, ErrorKind::NotFound, "{msg}");
    assert!(!out.exists());
}

#[test]
fn an_existing_file_is_replaced_only_when_asked() {
    let m = Mem::new();
    let data = disk_image(300_000, 4);
    let r = m.snapshot("d.img", &data, "d");
    let out = m.path("existing.img");
    std::fs::write(&out, b"precious").unwrap();
    let (kind, msg) = kind_of(
        m.store
            .restore(&m.access, &r.id.to_string(), &out, &NoProgress),
    );
    assert_eq!(kind, ErrorKind::Usage, "{msg}");
    assert!(msg.contains("existing.img"), "{msg}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious", "left as it was");
    let rr = m
        .store
        .restore_with(
            &m.access,
            &r.id.to_string(),
            &out,
            &RestoreOptions {
                force: true,
                ..RestoreOptions::default()
            },
            &NoProgress,
        )
        .unwrap();
    assert!(rr.replaced);
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

/// Files in the test directory whose name starts with `.tmp-` (what a failed restore must not
/// leave).
fn leftovers(m: &Mem) -> Vec<String> {
    std::fs::read_dir(m.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-") || n.contains(".tmp"))
        .collect()
}

#[test]
fn a_lost_pack_fails_the_restore_naming_it_and_leaves_no_output() {
    let m = Mem::new();
    let data = disk_image(500_000, 5);
    let r = m.snapshot("d.img", &data, "d");
    let (key, _) = m.pack_objects().remove(0);
    m.backend.delete(&key).unwrap();
    let out = m.path("out.img");
    let (kind, msg) = kind_of(
        m.store
            .restore(&m.access, &r.id.to_string(), &out, &NoProgress),
    );
    assert_eq!(kind, ErrorKind::Damaged, "{msg}");
    let pack = key.rsplit('/').next().unwrap();
    assert!(
        msg.contains(pack) && msg.contains("is missing"),
        "names the pack: {msg}"
    );
    assert!(!out.exists());
    assert!(leftovers(&m).is_empty(), "{:?}", leftovers(&m));
}

#[test]
fn a_flipped_byte_in_a_record_fails_the_restore_naming_the_chunk() {
    let m = Mem::new();
    let data = random_bytes(400_000, 6);
    let r = m.snapshot("d.img", &data, "d");
    let id = r.id.to_string();
    let chunks = m.data_chunks(&id);
    let (pack, entries) = m.trailers().remove(0);
    let victim = entries
        .iter()
        .find(|e| e.id == chunks[3])
        .expect("the pack holds the 4th chunk");
    let key = format!("packs/{}/{pack}", &pack.to_string()[..2]);
    let mut bytes = m.backend.get(&key).unwrap();
    bytes[(victim.offset + u64::from(victim.stored_len) / 2) as usize] ^= 0x40;
    m.put(&key, &bytes);
    let out = m.path("out.img");
    let (kind, msg) = kind_of(m.store.restore(&m.access, &id, &out, &NoProgress));
    assert_eq!(kind, ErrorKind::Damaged, "{msg}");
    assert!(
        msg.contains(&pack.to_string()) && msg.contains(&format!("offset {}", victim.offset)),
        "names the pack and the record: {msg}"
    );
    assert!(!out.exists());
    assert!(leftovers(&m).is_empty());
}

#[test]
fn diff_reports_exactly_the_changed_bytes() {
    let m = Mem::new();
    let a = disk_image(2 << 20, 7);
    let mut b = a.clone();
    b[300_000..300_100].copy_from_slice(&[0xAA; 100]);
    b[1_500_000] ^= 1;
    let ra = m.snapshot("d.img", &a, "d");
    let rb = m.snapshot("d.img", &b, "d");
    let d = m
        .store
        .diff_with(
            &m.access,
            &ra.id.to_string(),
            &rb.id.to_string(),
            &blocksnap_store::DiffOptions::exact(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(d.granularity, 1);
    let expect: Vec<[u64; 2]> = {
        // The exact bytes that differ, merged into ranges.
        let mut v: Vec<[u64; 2]> = Vec::new();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            if x != y {
                match v.last_mut() {
                    Some(r) if r[0] + r[1] == i as u64 => r[1] += 1,
                    _ => v.push([i as u64, 1]),
                }
            }
        }
        v
    };
    assert_eq!(d.changed, expect);
    assert!(
        d.bytes_read < 200_000,
        "equal chunks are not read: {}",
        d.bytes_read
    );
    let same = m
        .store
        .diff(
            &m.access,
            &ra.id.to_string(),
            &ra.id.to_string(),
            &NoProgress,
        )
        .unwrap();
    assert!(same.changed.is_empty());
    assert_eq!(same.bytes_read, 0);
    // By default, the 4 KiB blocks holding those bytes.
    let blocks = m
        .store
        .diff(
            &m.access,
            &ra.id.to_string(),
            &rb.id.to_string(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(blocks.granularity, 4096);
    assert_eq!(
        blocks.changed,
        vec![[299_008, 4096], [1_499_136, 4096]],
        "300000..300100 lies in the block at 299008, 1500000 in the one at 1499136"
    );
    assert_eq!(blocks.bytes_changed, 8192);
}
