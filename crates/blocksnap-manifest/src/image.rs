//! `images/IMG-ID.json`: a machine image — a named set of snapshots by device name (a block
//! device mapping), with an owner, launch permissions, tags and the key its data is under.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::docs::{
    Document, MAX_GRANTS, MAX_VOLUME_SIZE, validate_name, validate_tags, validate_text,
    validate_time,
};
use crate::error::DocError;
use crate::id::{ImageId, KeyId, SnapshotId};

/// Most volumes one image maps.
pub const MAX_IMAGE_VOLUMES: usize = 128;
/// Longest device name (`/dev/xvdf`, `vda`, `/dev/disk/by-id/…`).
pub const MAX_DEVICE_LEN: usize = 128;

/// One entry of the block device mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageVolume {
    /// The device name (`/dev/sda`, `vdb`).
    pub device: String,
    /// The snapshot the device is built from.
    pub snapshot: SnapshotId,
    /// The device's size in bytes (the snapshot's size).
    pub size: u64,
}

/// Who may rebuild (launch) an image besides its owner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchPermissions {
    /// Every account of the store may launch it (still subject to key grants).
    pub public: bool,
    /// These accounts may launch it.
    pub accounts: Vec<String>,
}

/// `images/IMG-ID.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDoc {
    /// `blocksnap.image/v1`.
    pub format: String,
    /// The image's id.
    pub id: ImageId,
    /// Its name, unique in the store.
    pub name: String,
    /// The account that owns it: the only one that may share, unshare or deregister it.
    pub owner: String,
    /// When it was created or registered.
    pub created: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// User tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The device the machine boots from; one of `volumes`.
    pub root_device: String,
    /// The block device mapping.
    pub volumes: Vec<ImageVolume>,
    /// Who may launch it besides the owner.
    pub launch_permissions: LaunchPermissions,
    /// The key every volume's data is encrypted with; none in a plain store.
    pub key: Option<KeyId>,
    /// MAC under `key` (see [`crate::Sealed`]); absent in plain stores and in stores not yet
    /// migrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl ImageDoc {
    /// True if `account` may launch the image: it owns it, it is public, or it is shared with it.
    pub fn may_launch(&self, account: &str) -> bool {
        self.owner == account
            || self.launch_permissions.public
            || self
                .launch_permissions
                .accounts
                .iter()
                .any(|a| a == account)
    }

    /// The volume of `device`, if the image maps it.
    pub fn volume(&self, device: &str) -> Option<&ImageVolume> {
        self.volumes.iter().find(|v| v.device == device)
    }
}

/// The file name a device's image is rebuilt to: the last part of its path, plus `.img`.
pub fn device_file_name(device: &str) -> String {
    format!("{}.img", device.rsplit('/').next().unwrap_or(device))
}

/// Checks a device name: `/dev/sda`, `xvdf`, `/dev/disk/by-id/nvme-1`: 1 to 128 bytes of
/// letters, digits and `-_.:+/`, no empty, `.` or `..` path parts, and a last part that is a
/// safe file name.
pub fn validate_device(doc: &'static str, field: &str, device: &str) -> Result<(), DocError> {
    let shown = || device.chars().take(40).collect::<String>();
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.:+/".contains(c);
    if device.is_empty() || device.len() > MAX_DEVICE_LEN || !device.chars().all(ok_char) {
        return Err(DocError::invalid(
            doc,
            field,
            format!(
                "'{}' is not a device name: 1 to {MAX_DEVICE_LEN} letters, digits and - _ . : + / (like /dev/sda or vdb)",
                shown()
            ),
        ));
    }
    let rest = device.strip_prefix('/').unwrap_or(device);
    if rest
        .split('/')
        .any(|part| part.is_empty() || part.starts_with('.') || part.starts_with('-'))
    {
        return Err(DocError::invalid(
            doc,
            field,
            format!(
                "'{}' has an empty part, or a part starting with . or -",
                shown()
            ),
        ));
    }
    Ok(())
}

impl Document for ImageDoc {
    const KIND: &'static str = "image";
    const FORMAT: &'static str = "blocksnap.image/v1";
    fn validate(&self) -> Result<(), DocError> {
        crate::seal::validate_mac(Self::KIND, self.mac.as_deref())?;
        let k = Self::KIND;
        validate_name(k, "name", &self.name)?;
        validate_name(k, "owner", &self.owner)?;
        validate_time(k, "created", &self.created)?;
        validate_text(k, "description", &self.description)?;
        validate_tags(k, &self.tags)?;
        if self.volumes.is_empty() || self.volumes.len() > MAX_IMAGE_VOLUMES {
            return Err(DocError::invalid(
                k,
                "volumes",
                format!("must hold 1 to {MAX_IMAGE_VOLUMES} volumes"),
            ));
        }
        let mut devices = BTreeSet::new();
        let mut files = BTreeSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let field = format!("volumes[{i}].device");
            validate_device(k, &field, &v.device)?;
            if !devices.insert(v.device.as_str()) {
                return Err(DocError::invalid(
                    k,
                    field,
                    format!("'{}' appears twice", v.device),
                ));
            }
            if !files.insert(device_file_name(&v.device)) {
                return Err(DocError::invalid(
                    k,
                    field,
                    format!(
                        "'{}' would be rebuilt to {}, like another device; give devices distinct last names",
                        v.device,
                        device_file_name(&v.device)
                    ),
                ));
            }
            if v.size > MAX_VOLUME_SIZE {
                return Err(DocError::invalid(
                    k,
                    format!("volumes[{i}].size"),
                    "exceeds the limit of 2^60 bytes",
                ));
            }
        }
        validate_device(k, "root_device", &self.root_device)?;
        if !devices.contains(self.root_device.as_str()) {
            return Err(DocError::invalid(
                k,
                "root_device",
                format!("'{}' is not one of the image's volumes", self.root_device),
            ));
        }
        let accounts = &self.launch_permissions.accounts;
        if accounts.len() > MAX_GRANTS {
            return Err(DocError::invalid(
                k,
                "launch_permissions.accounts",
                format!("has more than {MAX_GRANTS} entries"),
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, a) in accounts.iter().enumerate() {
            let field = format!("launch_permissions.accounts[{i}]");
            validate_name(k, &field, a)?;
            if !seen.insert(a.as_str()) {
                return Err(DocError::invalid(k, field, format!("'{a}' appears twice")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample_image() -> ImageDoc {
        ImageDoc {
            format: ImageDoc::FORMAT.into(),
            id: ImageId(0x1234_5678_9abc_def0),
            name: "web-2026-11".into(),
            owner: "alice".into(),
            created: "2026-11-24T08:00:00.123Z".into(),
            description: "web server".into(),
            tags: BTreeMap::from([("role".into(), "web".into())]),
            root_device: "/dev/sda".into(),
            volumes: vec![
                ImageVolume {
                    device: "/dev/sda".into(),
                    snapshot: SnapshotId(1),
                    size: 1 << 30,
                },
                ImageVolume {
                    device: "/dev/sdb".into(),
                    snapshot: SnapshotId(2),
                    size: 4096,
                },
            ],
            launch_permissions: LaunchPermissions {
                public: false,
                accounts: vec!["bob".into()],
            },
            key: Some(KeyId(9)),
            mac: None,
        }
    }

    fn field_error(doc: &ImageDoc) -> String {
        ImageDoc::from_json(&doc.to_json()).unwrap_err().to_string()
    }

    #[test]
    fn image_round_trips_and_knows_who_may_launch() {
        let img = sample_image();
        assert_eq!(ImageDoc::from_json(&img.to_json()).unwrap(), img);
        assert!(img.may_launch("alice") && img.may_launch("bob"));
        assert!(!img.may_launch("carol"));
        assert_eq!(device_file_name("/dev/sda"), "sda.img");
        assert_eq!(device_file_name("vdb"), "vdb.img");
    }

    #[test]
    fn invalid_images_name_the_field() {
        let mut img = sample_image();
        img.volumes[1].device = "/dev/sda".into();
        assert!(field_error(&img).contains("volumes[1].device"));
        let mut img = sample_image();
        img.volumes[1].device = "/dev/other/sda".into();
        assert!(field_error(&img).contains("rebuilt to sda.img"));
        let mut img = sample_image();
        img.root_device = "/dev/sdc".into();
        assert!(field_error(&img).contains("root_device"));
        let mut img = sample_image();
        img.volumes.clear();
        assert!(field_error(&img).contains("'volumes'"));
        for bad in ["/dev/../etc", "", "/dev//sda", "/dev/sd a", "/dev/.x", "-x"] {
            let mut img = sample_image();
            img.volumes[0].device = bad.into();
            img.root_device = "/dev/sdb".into();
            assert!(field_error(&img).contains("volumes[0].device"), "{bad}");
        }
        let mut img = sample_image();
        img.launch_permissions.accounts.push("bob".into());
        assert!(field_error(&img).contains("launch_permissions.accounts[1]"));
        let mut img = sample_image();
        img.volumes[0].size = u64::MAX;
        assert!(field_error(&img).contains("volumes[0].size"));
        let text = String::from_utf8(sample_image().to_json()).unwrap();
        let extra = text.replacen("{", "{\"admin\": true,", 1);
        assert!(ImageDoc::from_json(extra.as_bytes()).is_err());
    }

    fn arb_image() -> impl Strategy<Value = ImageDoc> {
        let volume = (any::<u64>(), 0u64..MAX_VOLUME_SIZE);
        (
            "[a-zA-Z0-9][a-zA-Z0-9_.:@+-]{0,30}",
            proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,20}", 0..4),
            proptest::collection::btree_map("[a-z]{1,4}[0-9]{0,2}", volume, 1..6),
            any::<bool>(),
            proptest::collection::btree_set("[a-z]{1,10}", 0..4),
            proptest::option::of(any::<u64>()),
            any::<u64>(),
        )
            .prop_map(|(name, tags, vols, public, accounts, key, id)| {
                let volumes: Vec<ImageVolume> = vols
                    .into_iter()
                    .map(|(dev, (snap, size))| ImageVolume {
                        device: format!("/dev/{dev}"),
                        snapshot: SnapshotId(snap),
                        size,
                    })
                    .collect();
                ImageDoc {
                    format: ImageDoc::FORMAT.into(),
                    id: ImageId(id),
                    name,
                    owner: "owner".into(),
                    created: "2026-11-24T08:00:00Z".into(),
                    description: String::new(),
                    tags,
                    root_device: volumes[0].device.clone(),
                    volumes,
                    launch_permissions: LaunchPermissions {
                        public,
                        accounts: accounts.into_iter().collect(),
                    },
                    key: key.map(KeyId),
                    mac: None,
                }
            })
    }

    proptest! {
        #[test]
        fn every_valid_image_round_trips(img in arb_image()) {
            let again = ImageDoc::from_json(&img.to_json()).unwrap();
            prop_assert_eq!(again, img);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ImageDoc::from_json(&bytes);
        }
    }
}
