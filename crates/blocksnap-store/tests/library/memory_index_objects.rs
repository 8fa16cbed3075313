//! Index objects: every committed pack has one beside it (`packs/XX/ID.idx`), so a second host
//! (another cache directory on the same objects) learns the packs of the first with one small
//! read per pack and no read of any pack, a warm open costs one listing whatever the number of
//! packs, a pack whose index object is missing (a crash between the two) is still found through
//! its trailer, a forged or damaged index object is not believed, and `repair index` reads the
//! trailers alone. The requests are counted by `CountingBackend`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::support::*;
use blocksnap_backend::{Backend, CountingBackend, MemoryBackend, Op};
use blocksnap_store::{Access, ChunkerKind, NoProgress, Store};

struct TwoHosts {
    mem: Mem,
    counting: Arc<CountingBackend>,
}

impl TwoHosts {
    fn new() -> TwoHosts {
        let backend = Arc::new(MemoryBackend::new());
        let counting = Arc::new(CountingBackend::new(backend.clone()));
        let mut mem = Mem::through(
            backend,
            counting.clone(),
            &mut small_chunks(ChunkerKind::Cdc),
        );
        mem.set_pack_size(1 << 20);
        TwoHosts { mem, counting }
    }

    /// The store as another host opens it: the same objects, its own (empty) cache.
    fn host(&self, name: &str) -> (Store, Access) {
        let store = Store::open_in(self.counting.clone(), self.mem.store.place().clone())
            .unwrap()
            .with_cache_home(self.mem.path(&format!("cache-{name}")))
            .with_config_home(self.mem.path("config"));
        let identity: PathBuf = self.mem.path("alice.key");
        let access = store.access(Some("alice"), Some(&identity)).unwrap();
        (store, access)
    }

    fn packs(&self) -> Vec<String> {
        self.mem
            .backend
            .list("packs/")
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .filter(|k| !k.ends_with(".idx"))
            .collect()
    }
}

#[test]
fn a_second_host_learns_packs_from_index_objects_and_a_warm_open_costs_one_listing() {
    let h = TwoHosts::new();
    let first = random_bytes(5 << 20, 1);
    let s1 = h.mem.snapshot("a.img", &first, "a");
    let packs = h.packs();
    assert!(packs.len() >= 3, "{packs:?}");
    // Every pack has its index object.
    for p in &packs {
        assert!(
            h.mem.backend.head(&format!("{p}.idx")).unwrap().is_some(),
            "{p} has no index object"
        );
    }

    // Host 2, its cache empty: one listing, one read of each index object, nothing of a pack.
    let (host2, access2) = h.host("2");
    h.counting.reset();
    let r = host2.refresh_index(&access2, &NoProgress).unwrap();
    assert_eq!(r.packs, packs.len() as u64, "{r:?}");
    assert_eq!(r.from_index_objects, packs.len() as u64, "{r:?}");
    assert_eq!(r.from_trailers, 0, "{r:?}");
    assert_eq!(h.counting.count(Op::List, "packs/"), 1);
    assert_eq!(h.counting.count(Op::Get, "packs/"), packs.len() as u64);
    for p in &packs {
        assert_eq!(h.counting.count(Op::Get, p), 1, "{p}");
        assert_eq!(
            h.counting.count(Op::Head, p),
            0,
            "{p}: its trailer was read"
        );
        assert_eq!(
            h.counting.count(Op::Range, p),
            0,
            "{p}: its trailer was read"
        );
    }

    // A warm open: the store opened again and its index brought up to date costs one listing
    // of the packs and a few reads of documents, none of any pack.
    let warm = || {
        h.counting.reset();
        let (store, access) = h.host("2");
        let r = store.refresh_index(&access, &NoProgress).unwrap();
        assert_eq!(r.new_packs, 0, "{r:?}");
        let requests = h.counting.requests();
        let on_packs: Vec<_> = requests
            .iter()
            .filter(|(_, k)| k.starts_with("packs/"))
            .collect();
        assert_eq!(
            on_packs,
            [&(Op::List, "packs/".to_string())],
            "{requests:?}"
        );
        requests.len()
    };
    let warm_before = warm();
    assert!(warm_before <= 8, "{:?}", h.counting.requests());

    // Host 1 writes more packs; host 2 reads only their index objects.
    let second = random_bytes(4 << 20, 2);
    let s2 = h.mem.snapshot("b.img", &second, "b");
    let all = h.packs();
    let new: Vec<&String> = all.iter().filter(|p| !packs.contains(p)).collect();
    assert!(new.len() >= 2, "{new:?}");
    h.counting.reset();
    let r = host2.refresh_index(&access2, &NoProgress).unwrap();
    assert_eq!(r.new_packs, new.len() as u64, "{r:?}");
    assert_eq!(r.from_index_objects, new.len() as u64, "{r:?}");
    assert_eq!(r.from_trailers, 0, "{r:?}");
    assert_eq!(h.counting.count(Op::Get, "packs/"), new.len() as u64);
    // The warm open costs the same with more packs: it does not grow with them.
    assert_eq!(warm(), warm_before);

    // Host 2 restores both, byte for byte.
    assert_eq!(
        h.mem.restored_from(&host2, &access2, &s1.id.to_string()),
        first
    );
    assert_eq!(
        h.mem.restored_from(&host2, &access2, &s2.id.to_string()),
        second
    );

    // `repair index` reads the trailers alone: no index object.
    h.counting.reset();
    let rep = host2.repair_index(&access2, &NoProgress).unwrap();
    assert_eq!(rep.packs, all.len() as u64);
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    let idx_reads = h
        .counting
        .requests()
        .into_iter()
        .filter(|(_, k)| k.ends_with(".idx"))
        .count();
    assert_eq!(idx_reads, 0);
}

#[test]
fn a_pack_without_its_index_object_is_found_by_its_trailer_and_a_bad_one_is_not_believed() {
    let h = TwoHosts::new();
    let data = random_bytes(5 << 20, 3);
    let s = h.mem.snapshot("a.img", &data, "a");
    let packs = h.packs();
    assert!(packs.len() >= 3, "{packs:?}");
    // A crash between a pack and its index object: the pack has none.
    h.mem.backend.delete(&format!("{}.idx", packs[0])).unwrap();
    // Another pack's index object copied over a third's (a store writer's forgery), and a
    // fourth's damaged.
    let other = h.mem.backend.get(&format!("{}.idx", packs[1])).unwrap();
    h.mem.put(&format!("{}.idx", packs[2]), &other);
    let (host3, access3) = h.host("3");
    let r = host3.refresh_index(&access3, &NoProgress).unwrap();
    assert_eq!(r.new_packs, packs.len() as u64, "{r:?}");
    assert_eq!(r.from_trailers, 2, "{r:?}");
    assert_eq!(r.from_index_objects, packs.len() as u64 - 2, "{r:?}");
    assert_eq!(
        h.mem.restored_from(&host3, &access3, &s.id.to_string()),
        data
    );
    // Damage to every index object: still restored, through the trailers.
    for p in &packs[1..] {
        let key = format!("{p}.idx");
        let mut bytes = h.mem.backend.get(&key).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        h.mem.put(&key, &bytes);
    }
    let (host4, access4) = h.host("4");
    let r = host4.refresh_index(&access4, &NoProgress).unwrap();
    assert_eq!(r.from_index_objects, 0, "{r:?}");
    assert_eq!(r.from_trailers, packs.len() as u64, "{r:?}");
    assert_eq!(
        h.mem.restored_from(&host4, &access4, &s.id.to_string()),
        data
    );
    // `check` is clean: index objects are a cache's source, not data.
    let report = h
        .mem
        .store
        .check(&h.mem.access, false, &NoProgress)
        .unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}
