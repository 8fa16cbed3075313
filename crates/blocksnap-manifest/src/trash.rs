//! `trash/ID.json`: the tombstone of a deleted snapshot or image.

use serde::{Deserialize, Serialize};

use crate::docs::{Document, SnapshotDoc, validate_name, validate_time};
use crate::error::DocError;
use crate::image::ImageDoc;

/// `trash/ID.json`: a deleted snapshot or image, restorable until `expires`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrashDoc {
    /// `blocksnap.trash/v1`.
    pub format: String,
    /// The deleted object's id (`snap-…` or `img-…`).
    pub id: String,
    /// What it is: `snapshot` or `image`.
    pub kind: String,
    /// When it was deleted.
    pub deleted: String,
    /// When it may be removed for good.
    pub expires: String,
    /// The account that deleted it.
    pub deleted_by: String,
    /// The deleted snapshot document, whole (kind `snapshot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotDoc>,
    /// The deleted image document, whole (kind `image`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageDoc>,
}

impl Document for TrashDoc {
    const KIND: &'static str = "trash";
    const FORMAT: &'static str = "blocksnap.trash/v1";
    fn validate(&self) -> Result<(), DocError> {
        validate_time(Self::KIND, "deleted", &self.deleted)?;
        validate_time(Self::KIND, "expires", &self.expires)?;
        validate_name(Self::KIND, "deleted_by", &self.deleted_by)?;
        let id = match (self.kind.as_str(), &self.snapshot, &self.image) {
            ("snapshot", Some(s), None) => {
                s.validate()?;
                s.id.to_string()
            }
            ("image", None, Some(i)) => {
                i.validate()?;
                i.id.to_string()
            }
            ("snapshot" | "image", _, _) => {
                return Err(DocError::invalid(
                    Self::KIND,
                    &self.kind,
                    "must hold exactly the deleted document of its kind",
                ));
            }
            (other, _, _) => {
                return Err(DocError::invalid(
                    Self::KIND,
                    "kind",
                    format!(
                        "'{}' is not known",
                        other.chars().take(20).collect::<String>()
                    ),
                ));
            }
        };
        if self.id != id {
            return Err(DocError::invalid(
                Self::KIND,
                "id",
                format!("differs from the {}'s id", self.kind),
            ));
        }
        Ok(())
    }
}
