//! Accounts, grants and launch permissions over the memory backend, between two accounts: no
//! snapshot can be read without a grant on its key (before a grant, after a revoke), launching an
//! image takes both the owner's permission and a grant, a permission or a grant forged in the
//! documents gives no data, only the owner shares an image, and an identity that is not the
//! account's is refused.

use crate::support::*;
use blocksnap_backend::Backend;
use blocksnap_manifest::{Document, GrantDoc, ImageDoc, KeyDoc};
use blocksnap_store::{Audience, ErrorKind, ImageOptions, NoProgress, RestoreOptions};

/// alice's store with one image `web` of one disk, and bob, an account with no grant.
fn alice_and_bob() -> (Mem, blocksnap_store::Access, Vec<u8>) {
    let m = Mem::new();
    let disk = disk_image(1 << 20, 9);
    let opts = ImageOptions {
        name: "web".into(),
        volumes: vec![("vda".into(), m.file("vda.img", &disk))],
        ..ImageOptions::default()
    };
    m.store.create_image(&m.access, &opts, &NoProgress).unwrap();
    let bob = m.add_account("bob");
    (m, bob, disk)
}

fn rebuild(m: &Mem, who: &blocksnap_store::Access) -> blocksnap_store::Result<Vec<u8>> {
    let out = m.path(&format!("rebuild-{}", random_name()));
    std::fs::create_dir(&out).unwrap();
    m.store
        .rebuild_image(who, "web", &out, &RestoreOptions::default(), &NoProgress)?;
    Ok(std::fs::read(out.join("vda.img")).unwrap())
}

fn web_snapshot(m: &Mem) -> String {
    m.store.resolve_image("web").unwrap().volumes[0]
        .snapshot
        .to_string()
}

fn restore(m: &Mem, who: &blocksnap_store::Access, id: &str) -> blocksnap_store::Result<Vec<u8>> {
    let out = m.path(&format!("restore-{}", random_name()));
    m.store.restore(who, id, &out, &NoProgress)?;
    Ok(std::fs::read(&out).unwrap())
}

#[test]
fn no_snapshot_is_read_without_a_grant_on_its_key() {
    let (m, bob, disk) = alice_and_bob();
    let snap = web_snapshot(&m);
    let out = m.path("bob.img");
    let (kind, msg) = kind_of(m.store.restore(&bob, &snap, &out, &NoProgress));
    assert_eq!(kind, ErrorKind::Denied, "{msg}");
    assert!(msg.contains("bob") && msg.contains("key grant"), "{msg}");
    assert!(!out.exists());
    let (kind, _) = kind_of(m.store.diff(&bob, &snap, &snap, &NoProgress));
    assert_eq!(kind, ErrorKind::Denied);

    let (key, _) = m
        .store
        .grant_key(&m.access, "default", "bob", None)
        .unwrap();
    assert!(key.grants.iter().any(|g| g.account == "bob"));
    assert_eq!(restore(&m, &bob, &snap).unwrap(), disk);

    m.store.revoke_key(&m.access, "default", "bob").unwrap();
    let (kind, msg) = kind_of(restore(&m, &bob, &snap));
    assert_eq!(kind, ErrorKind::Denied, "after a revoke: {msg}");
    assert_eq!(
        restore(&m, &m.access, &snap).unwrap(),
        disk,
        "alice keeps hers"
    );
}

#[test]
fn launching_takes_the_owners_permission_and_a_grant() {
    let (m, bob, disk) = alice_and_bob();
    let (kind, msg) = kind_of(rebuild(&m, &bob));
    assert_eq!(kind, ErrorKind::Denied, "{msg}");
    assert!(
        msg.contains("launch permission") && msg.contains("grant on its key"),
        "both are missing: {msg}"
    );
    assert!(m.store.visible_images(&bob).unwrap().is_empty());

    m.store
        .share_image(&m.access, "web", &Audience::Account("bob".into()))
        .unwrap();
    assert_eq!(m.store.visible_images(&bob).unwrap().len(), 1);
    let (kind, msg) = kind_of(rebuild(&m, &bob));
    assert_eq!(kind, ErrorKind::Denied, "{msg}");
    assert!(
        !msg.contains("launch permission") && msg.contains("key grant default bob"),
        "only the grant is missing, and the message says how to give it: {msg}"
    );

    m.store
        .grant_key(&m.access, "default", "bob", None)
        .unwrap();
    assert_eq!(rebuild(&m, &bob).unwrap(), disk);

    m.store
        .unshare_image(&m.access, "web", &Audience::Account("bob".into()))
        .unwrap();
    let (kind, msg) = kind_of(rebuild(&m, &bob));
    assert_eq!(kind, ErrorKind::Denied, "{msg}");
    assert!(msg.contains("launch permission"), "{msg}");

    // Public: every account may launch it (given a grant).
    m.store
        .share_image(&m.access, "web", &Audience::Public)
        .unwrap();
    assert_eq!(rebuild(&m, &bob).unwrap(), disk);
}

#[test]
fn only_the_owner_changes_an_image() {
    let (m, bob, _) = alice_and_bob();
    m.store
        .grant_key(&m.access, "default", "bob", None)
        .unwrap();
    let before = m.store.resolve_image("web").unwrap();
    let (kind, msg) = kind_of(m.store.share_image(&bob, "web", &Audience::Public));
    assert_eq!(kind, ErrorKind::Denied, "{msg}");
    assert!(msg.contains("only the owner 'alice'"), "{msg}");
    let (kind, _) = kind_of(m.store.deregister_image(&bob, "web", true));
    assert_eq!(kind, ErrorKind::Denied);
    assert_eq!(m.store.resolve_image("web").unwrap(), before, "unchanged");

    // Naming alice with bob's identity does not make bob the owner.
    let bob_as_alice = m.store.access(Some("alice"), Some(&bob.identity)).unwrap();
    let (kind, msg) = kind_of(m.store.share_image(&bob_as_alice, "web", &Audience::Public));
    assert_eq!(kind, ErrorKind::Denied, "{msg}");
    assert!(msg.contains("not the identity of account 'alice'"), "{msg}");
    let (kind, _) = kind_of(restore(&m, &bob_as_alice, &web_snapshot(&m)));
    assert_eq!(kind, ErrorKind::Denied);
    assert_eq!(m.store.resolve_image("web").unwrap(), before);
}

#[test]
fn a_permission_or_grant_forged_in_the_documents_gives_no_data() {
    let (m, bob, _) = alice_and_bob();
    let image = m.store.resolve_image("web").unwrap();

    // bob edits the image document to give himself the launch permission.
    let key = format!("images/{}.json", image.id);
    let original: ImageDoc = doc_of(&*m.backend, &key);
    let mut forged = original.clone();
    forged.launch_permissions.accounts.push("bob".into());
    m.put(&key, &forged.to_json());
    // The owner did not sign that: refused as tampered, whoever asks.
    let (kind, msg) = kind_of(rebuild(&m, &bob));
    assert_eq!(kind, ErrorKind::Tampered, "{msg}");
    assert!(msg.contains("did not sign it as it is"), "{msg}");
    m.put(&key, &original.to_json());
    let (kind, msg) = kind_of(rebuild(&m, &bob));
    assert_eq!(kind, ErrorKind::Denied, "{msg}");
    assert!(msg.contains("launch permission"), "{msg}");

    // ... and the key document to copy alice's grant under his name: his identity cannot
    // unwrap what was wrapped to alice.
    let kkey = format!("keys/{}.json", image.key.unwrap());
    let mut doc: KeyDoc = doc_of(&*m.backend, &kkey);
    let alices = doc.grants.iter().find(|g| g.account == "alice").unwrap();
    doc.grants.push(GrantDoc {
        account: "bob".into(),
        wrapped: alices.wrapped.clone(),
    });
    m.put(&kkey, &doc.to_json());
    let (kind, msg) = kind_of(restore(&m, &bob, &web_snapshot(&m)));
    assert_eq!(kind, ErrorKind::Denied, "{msg}");
    assert!(msg.contains("cannot unwrap"), "{msg}");
    assert!(m.backend.list("locks/").unwrap().is_empty());
}

#[test]
fn a_key_of_bobs_own_is_his_alone() {
    let (m, bob, _) = alice_and_bob();
    m.store.create_key(&bob, "bobs").unwrap();
    let secret = random_bytes(200_000, 77);
    let source = m.file("bob-disk.img", &secret);
    let r = m
        .store
        .snapshot(
            &bob,
            &blocksnap_store::SnapshotOptions {
                source,
                key: Some("bobs".into()),
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap();
    let id = r.id.to_string();
    assert_eq!(restore(&m, &bob, &id).unwrap(), secret);
    let (kind, msg) = kind_of(restore(&m, &m.access, &id));
    assert_eq!(kind, ErrorKind::Denied, "{msg}");
    assert!(msg.contains("bobs"), "{msg}");
    // bob cannot grant alice's key to himself, having no grant on it.
    let (kind, _) = kind_of(m.store.grant_key(&bob, "default", "bob", None));
    assert_eq!(kind, ErrorKind::Denied);
}

/// bob, holding a grant on alice's key, rewrites the key document (alice's grant dropped) and,
/// holding the key, recomputes its MAC: the document is no longer the one its signer signed,
/// so it is refused (tampered) wherever it is used, and `check` lists it.
#[test]
fn a_key_holder_cannot_rewrite_a_key_document_another_account_signed() {
    use blocksnap_manifest::Sealed;
    let (m, bob, _) = alice_and_bob();
    let (kdoc, _) = m
        .store
        .grant_key(&m.access, "default", "bob", None)
        .unwrap();
    assert_eq!(kdoc.signed_by.as_deref(), Some("alice"));

    let text = std::fs::read_to_string(&bob.identity).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let identity: age::x25519::Identity = line.parse().unwrap();
    let grant = kdoc.grants.iter().find(|g| g.account == "bob").unwrap();
    let key = age::decrypt(&identity, &hex::decode(&grant.wrapped).unwrap()).unwrap();
    let codec = blocksnap_pack::ChunkCodec::encrypted(
        kdoc.id,
        blocksnap_pack::DataKey::from_slice(&key).unwrap(),
        3,
    );
    let mut forged = kdoc.clone();
    forged.grants.retain(|g| g.account == "bob");
    forged.mac = None;
    let mac = codec
        .document_mac("key", &forged.seal_name(), &forged.sealed_bytes())
        .unwrap();
    forged.mac = Some(hex::encode(mac));
    m.put(&format!("keys/{}.json", kdoc.id), &forged.to_json());

    let (kind, msg) = kind_of(restore(&m, &bob, &web_snapshot(&m)));
    assert_eq!(kind, ErrorKind::Tampered, "{msg}");
    assert!(msg.contains("did not sign its document as it is"), "{msg}");
    let report = m.store.check(&bob, false, &NoProgress).unwrap();
    assert!(!report.ok);
    assert!(
        report.tampered.iter().any(|t| t.contains("did not sign")),
        "{:?}",
        report.tampered
    );
}
