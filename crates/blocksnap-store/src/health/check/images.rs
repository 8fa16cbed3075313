//! The images phase of `check`: every device's snapshot is there, of the recorded size, under
//! the image's key, and restorable.

use std::collections::HashMap;

use blocksnap_manifest::{KeyId, SnapshotId};

use super::CheckReport;
use super::documents::Documents;

/// Checks every image of `docs` against its snapshots (after the snapshots phase, whose damaged
/// snapshots make the images that use them damaged).
pub(super) fn check_images(docs: &Documents, report: &mut CheckReport) {
    let known: HashMap<SnapshotId, (u64, Option<KeyId>)> = docs
        .snapshots
        .iter()
        .map(|(d, _)| (d.id, (d.size, d.key)))
        .collect();
    for (image, place) in &docs.images {
        report.images += 1;
        let mut bad = false;
        for v in &image.volumes {
            let problem = match known.get(&v.snapshot) {
                None => Some(format!("snapshot {} is missing", v.snapshot)),
                Some((size, key)) if *size != v.size || *key != image.key => Some(format!(
                    "snapshot {} has size {size} and key {key:?}, the image says {} and {:?}",
                    v.snapshot, v.size, image.key
                )),
                Some(_) if report.damaged_snapshots.contains(&v.snapshot) => {
                    Some(format!("snapshot {} is damaged (see above)", v.snapshot))
                }
                Some(_) => None,
            };
            if let Some(p) = problem {
                bad = true;
                report.problems.push(format!(
                    "image '{}' ({}{place}) device {}: {p}",
                    image.name, image.id, v.device
                ));
            }
        }
        if bad {
            report.damaged_images.push(image.id);
        }
    }
}
