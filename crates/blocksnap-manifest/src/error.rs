//! Errors for documents read from untrusted bytes.

/// A document that could not be read or failed validation. It names the document kind and the
/// field, so a user can find what is wrong in the file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DocError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("{doc} document is malformed: {detail}")]
    Malformed {
        /// The document kind (`snapshot`, `key`, ...).
        doc: &'static str,
        /// What the parser said.
        detail: String,
    },
    /// A format name this version does not know.
    #[error(
        "{doc} document has format '{found}', but this blocksnap reads only '{expected}': \
         upgrade blocksnap to read it"
    )]
    UnknownFormat {
        /// The document kind.
        doc: &'static str,
        /// The format found.
        found: String,
        /// The format supported.
        expected: &'static str,
    },
    /// A field failed validation.
    #[error("{doc} document: field '{field}' {problem}")]
    Invalid {
        /// The document kind.
        doc: &'static str,
        /// The field's name.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl DocError {
    pub(crate) fn invalid(
        doc: &'static str,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        DocError::Invalid {
            doc,
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A damaged or malformed extent list.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtentError {
    /// The stream does not start with the extent list magic.
    #[error("extent list does not start with the expected header (not an extent list, or damaged)")]
    BadHeader,
    /// A record type byte that is not known.
    #[error("extent list has an unknown record type {tag:#04x} at byte {at}")]
    BadTag {
        /// The byte found.
        tag: u8,
        /// Its position in the stream.
        at: u64,
    },
    /// A record with a length of zero or over the limit.
    #[error("extent list has a record of invalid length {len} at byte {at}")]
    BadLength {
        /// The length found.
        len: u64,
        /// Its position in the stream.
        at: u64,
    },
    /// The stream ended inside a record, or the extents do not add up to the volume size.
    #[error("extent list is truncated or inconsistent: {0}")]
    Inconsistent(String),
}
