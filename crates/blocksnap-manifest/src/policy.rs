//! Lifecycle policies: tag-targeted schedules with retention.
//!
//! A schedule is written `[NAME:] every N(h|d|w|mo|y) [at HH:MM] keep (N | N(d|w|mo|y))`, for
//! example `daily: every 1d at 03:00 keep 7` or `every 1mo keep 1y`. Times are UTC.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::docs::{Document, MAX_TAGS, validate_name, validate_tags};
use crate::error::DocError;

/// A unit of time in a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Hours.
    #[serde(rename = "h")]
    Hour,
    /// Days.
    #[serde(rename = "d")]
    Day,
    /// Weeks.
    #[serde(rename = "w")]
    Week,
    /// Calendar months.
    #[serde(rename = "mo")]
    Month,
    /// Calendar years.
    #[serde(rename = "y")]
    Year,
}

impl Unit {
    fn parse(s: &str) -> Option<Unit> {
        Some(match s {
            "h" => Unit::Hour,
            "d" => Unit::Day,
            "w" => Unit::Week,
            "mo" => Unit::Month,
            "y" => Unit::Year,
            _ => return None,
        })
    }

    /// The unit's suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Unit::Hour => "h",
            Unit::Day => "d",
            Unit::Week => "w",
            Unit::Month => "mo",
            Unit::Year => "y",
        }
    }
}

/// `N` units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// How many.
    pub n: u32,
    /// Of what.
    pub unit: Unit,
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.n, self.unit.suffix())
    }
}

/// How long a schedule keeps its snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The newest N.
    Count(u32),
    /// Those younger than this.
    Age(Period),
}

/// One schedule of a policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Its name (tagged on the snapshots it takes).
    pub name: String,
    /// How often.
    pub every: Period,
    /// Time of day (UTC) as minutes after midnight; none means midnight.
    pub at_minutes: Option<u32>,
    /// Retention.
    pub keep: Keep,
}

const MAX_N: u32 = 100_000;

impl Schedule {
    /// Parses the schedule syntax. The error says what was expected.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let err = |why: &str| {
            format!(
                "schedule '{}': {why}; write [NAME:] every N(h|d|w|mo|y) [at HH:MM] keep (N | N(d|w|mo|y)), \
                 e.g. \"daily: every 1d at 03:00 keep 7\"",
                text.chars().take(80).collect::<String>()
            )
        };
        let (name, rest) = match text.split_once(':') {
            Some((n, r))
                if !n.trim().contains(' ')
                    && !n.trim().is_empty()
                    && !n.trim().chars().all(|c| c.is_ascii_digit()) =>
            {
                (Some(n.trim().to_string()), r)
            }
            _ => (None, text),
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let mut i = 0;
        let mut next = || {
            let w = words.get(i).copied();
            i += 1;
            w
        };
        if next() != Some("every") {
            return Err(err("it must start with 'every'"));
        }
        let every = next()
            .and_then(parse_period)
            .ok_or_else(|| err("'every' needs N with a unit h, d, w, mo or y"))?;
        let mut word = next();
        let mut at_minutes = None;
        if word == Some("at") {
            let hm = next().ok_or_else(|| err("'at' needs HH:MM"))?;
            at_minutes =
                Some(parse_hhmm(hm).ok_or_else(|| err("'at' needs HH:MM, 00:00 to 23:59"))?);
            word = next();
        }
        if word != Some("keep") {
            return Err(err("'keep' is missing"));
        }
        let k = next().ok_or_else(|| err("'keep' needs N or N with a unit d, w, mo or y"))?;
        let keep = match k.parse::<u32>() {
            Ok(n) if (1..=MAX_N).contains(&n) => Keep::Count(n),
            Ok(_) => return Err(err("'keep N' needs N from 1 to 100000")),
            Err(_) => match parse_period(k) {
                Some(p) if p.unit != Unit::Hour => Keep::Age(p),
                _ => return Err(err("'keep' needs N or N with a unit d, w, mo or y")),
            },
        };
        if next().is_some() {
            return Err(err("unexpected words after the retention"));
        }
        let name = name.unwrap_or_else(|| format!("every-{every}"));
        validate_name("policy", "schedule name", &name).map_err(|e| err(&e.to_string()))?;
        Ok(Schedule {
            name,
            every,
            at_minutes,
            keep,
        })
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: every {}", self.name, self.every)?;
        if let Some(m) = self.at_minutes {
            write!(f, " at {:02}:{:02}", m / 60, m % 60)?;
        }
        match self.keep {
            Keep::Count(n) => write!(f, " keep {n}"),
            Keep::Age(p) => write!(f, " keep {p}"),
        }
    }
}

fn parse_period(s: &str) -> Option<Period> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let n: u32 = s[..split].parse().ok()?;
    let unit = Unit::parse(&s[split..])?;
    (1..=MAX_N).contains(&n).then_some(Period { n, unit })
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// The values a policy accepts for one tag key: a volume whose tag of that key has any of them
/// is targeted. Written as a string when there is one value (all `blocksnap.policy/v1` knows),
/// as an array of strings when there are several (`blocksnap.policy/v2`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagValues(pub BTreeSet<String>);

impl Serialize for TagValues {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.first() {
            Some(one) if self.0.len() == 1 => s.serialize_str(one),
            _ => self.0.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TagValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(TagValues(match OneOrMany::deserialize(d)? {
            OneOrMany::One(v) => BTreeSet::from([v]),
            OneOrMany::Many(v) => v.into_iter().collect(),
        }))
    }
}

/// Target tags: for each key, the values that select a volume.
pub type TargetTags = BTreeMap<String, TagValues>;

/// `policies/NAME.json`: schedules applied to every volume carrying any of the target tags.
///
/// `blocksnap.policy/v1` holds one value per target key; `blocksnap.policy/v2` (written only
/// when some key has several values, so that older readers keep reading every other policy)
/// allows an array of values. Both decode into this type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// `blocksnap.policy/v1`, or `blocksnap.policy/v2` when a key has several values.
    pub format: String,
    /// The policy's name.
    pub name: String,
    /// Volumes carrying any of these tags (any key with any of its values) are targeted.
    pub target_tags: TargetTags,
    /// One to four schedules.
    pub schedules: Vec<Schedule>,
    /// When it was created.
    pub created: String,
    /// The data key whose MAC the document carries (the key of the account that wrote it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<crate::KeyId>,
    /// MAC under `key` (see [`crate::Sealed`]); absent in plain stores and in stores not yet
    /// migrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl PolicyDoc {
    /// `blocksnap.policy/v2`: target keys may hold several values.
    pub const FORMAT_V2: &'static str = "blocksnap.policy/v2";

    /// The oldest format that can hold `target_tags`: v1 unless a key has several values.
    pub fn format_for(target_tags: &TargetTags) -> &'static str {
        if target_tags.values().any(|v| v.0.len() > 1) {
            Self::FORMAT_V2
        } else {
            Self::FORMAT
        }
    }

    /// Target tags from `K=V` pairs: repeated keys keep every value.
    pub fn target_tags_from<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> TargetTags {
        let mut tags = TargetTags::new();
        for (k, v) in pairs {
            tags.entry(k.into()).or_default().0.insert(v.into());
        }
        tags
    }

    /// Every target tag as a `(key, value)` pair, in order.
    pub fn target_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.target_tags
            .iter()
            .flat_map(|(k, vs)| vs.0.iter().map(move |v| (k.as_str(), v.as_str())))
    }

    /// True if a volume with `tags` is targeted: it carries any target tag.
    pub fn targets(&self, tags: &BTreeMap<String, String>) -> bool {
        self.target_tags
            .iter()
            .any(|(k, vs)| tags.get(k).is_some_and(|v| vs.0.contains(v)))
    }
}

impl Document for PolicyDoc {
    const KIND: &'static str = "policy";
    const FORMAT: &'static str = "blocksnap.policy/v1";

    fn from_json(bytes: &[u8]) -> Result<Self, DocError> {
        #[derive(Deserialize)]
        struct Peek {
            format: Option<String>,
        }
        let malformed = |e: serde_json::Error| DocError::Malformed {
            doc: Self::KIND,
            detail: e.to_string(),
        };
        let peek: Peek = serde_json::from_slice(bytes).map_err(malformed)?;
        match peek.format {
            Some(f) if f == Self::FORMAT || f == Self::FORMAT_V2 => {}
            Some(f) => {
                return Err(DocError::UnknownFormat {
                    doc: Self::KIND,
                    found: f.chars().take(80).collect(),
                    expected: Self::FORMAT_V2,
                });
            }
            None => return Err(DocError::invalid(Self::KIND, "format", "is missing")),
        }
        let doc: Self = serde_json::from_slice(bytes).map_err(malformed)?;
        doc.validate()?;
        Ok(doc)
    }

    fn validate(&self) -> Result<(), DocError> {
        validate_name(Self::KIND, "name", &self.name)?;
        crate::seal::validate_mac(Self::KIND, self.mac.as_deref())?;
        if self.format != Self::FORMAT && self.format != Self::FORMAT_V2 {
            return Err(DocError::invalid(
                Self::KIND,
                "format",
                format!("must be {} or {}", Self::FORMAT, Self::FORMAT_V2),
            ));
        }
        let pairs = self.target_pairs().count();
        if pairs > MAX_TAGS {
            return Err(DocError::invalid(
                Self::KIND,
                "target_tags",
                format!("has {pairs} tags, at most {MAX_TAGS} allowed"),
            ));
        }
        for (k, vs) in &self.target_tags {
            if vs.0.is_empty() {
                return Err(DocError::invalid(
                    Self::KIND,
                    format!("target_tags.{}", k.chars().take(40).collect::<String>()),
                    "needs at least one value",
                ));
            }
            if vs.0.len() > 1 && self.format == Self::FORMAT {
                return Err(DocError::invalid(
                    Self::KIND,
                    format!("target_tags.{}", k.chars().take(40).collect::<String>()),
                    format!(
                        "has several values, which {} cannot hold (that needs {})",
                        Self::FORMAT,
                        Self::FORMAT_V2
                    ),
                ));
            }
            for v in &vs.0 {
                validate_tags(Self::KIND, &BTreeMap::from([(k.clone(), v.clone())]))?;
            }
        }
        if self.target_tags.is_empty() {
            return Err(DocError::invalid(
                Self::KIND,
                "target_tags",
                "needs at least one tag",
            ));
        }
        if self.schedules.is_empty() || self.schedules.len() > 4 {
            return Err(DocError::invalid(
                Self::KIND,
                "schedules",
                "must hold one to four schedules",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, s) in self.schedules.iter().enumerate() {
            validate_name(Self::KIND, &format!("schedules[{i}].name"), &s.name)?;
            if !names.insert(&s.name) {
                return Err(DocError::invalid(
                    Self::KIND,
                    format!("schedules[{i}].name"),
                    "appears twice",
                ));
            }
            let ok_n = |n: u32| (1..=MAX_N).contains(&n);
            let keep_ok = match s.keep {
                Keep::Count(n) => ok_n(n),
                Keep::Age(p) => ok_n(p.n) && p.unit != Unit::Hour,
            };
            if !ok_n(s.every.n) || !keep_ok || s.at_minutes.is_some_and(|m| m >= 24 * 60) {
                return Err(DocError::invalid(
                    Self::KIND,
                    format!("schedules[{i}]"),
                    "is out of range",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_examples() {
        let s = Schedule::parse("daily: every 1d at 03:00 keep 7").unwrap();
        assert_eq!(s.name, "daily");
        assert_eq!(
            s.every,
            Period {
                n: 1,
                unit: Unit::Day
            }
        );
        assert_eq!(s.at_minutes, Some(180));
        assert_eq!(s.keep, Keep::Count(7));
        let s = Schedule::parse("every 1mo keep 1y").unwrap();
        assert_eq!(s.name, "every-1mo");
        assert_eq!(
            s.keep,
            Keep::Age(Period {
                n: 1,
                unit: Unit::Year
            })
        );
        assert_eq!(Schedule::parse(&s.to_string()).unwrap(), s);
        assert_eq!(
            Schedule::parse("hourly: every 6h keep 4")
                .unwrap()
                .every
                .unit,
            Unit::Hour
        );
    }

    #[test]
    fn rejects_with_the_syntax() {
        for bad in [
            "",
            "every",
            "every 1x keep 7",
            "every 0d keep 7",
            "every 1d keep",
            "every 1d keep 0",
            "every 1d keep 3h",
            "every 1d at 25:00 keep 7",
            "every 1d at 3:00 keep 7",
            "every 1d keep 7 please",
            "sometimes 1d keep 7",
        ] {
            let e = Schedule::parse(bad).unwrap_err();
            assert!(e.contains("every N(h|d|w|mo|y)"), "{bad}: {e}");
        }
    }

    const SCHEDULES: &str = r#"[{"name": "daily", "every": {"n": 1, "unit": "d"},
        "at_minutes": 180, "keep": {"count": 7}}]"#;

    fn doc(format: &str, target_tags: &str) -> Vec<u8> {
        format!(
            r#"{{"format": "{format}", "name": "p", "target_tags": {target_tags},
            "schedules": {SCHEDULES}, "created": "2026-11-23T00:00:00.000Z"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn v1_documents_still_read_and_single_values_are_written_as_v1() {
        let old = PolicyDoc::from_json(&doc(PolicyDoc::FORMAT, r#"{"env": "prod"}"#)).unwrap();
        assert_eq!(old.target_pairs().collect::<Vec<_>>(), [("env", "prod")]);
        assert_eq!(PolicyDoc::format_for(&old.target_tags), PolicyDoc::FORMAT);
        // Written back as it was: a string, not an array, so older readers read it too.
        let json = String::from_utf8(old.to_json()).unwrap();
        assert!(json.contains(r#""env": "prod""#), "{json}");
        assert!(old.targets(&BTreeMap::from([("env".into(), "prod".into())])));
        assert!(!old.targets(&BTreeMap::from([("env".into(), "dev".into())])));
    }

    #[test]
    fn several_values_per_key_need_v2_and_any_of_them_matches() {
        let tags = PolicyDoc::target_tags_from([("env", "prod"), ("env", "dev"), ("tier", "db")]);
        assert_eq!(PolicyDoc::format_for(&tags), PolicyDoc::FORMAT_V2);
        let v2 = PolicyDoc::from_json(&doc(
            PolicyDoc::FORMAT_V2,
            r#"{"env": ["prod", "dev"], "tier": "db"}"#,
        ))
        .unwrap();
        assert_eq!(v2.target_tags, tags);
        assert_eq!(PolicyDoc::from_json(&v2.to_json()).unwrap(), v2);
        for (k, v, hit) in [
            ("env", "prod", true),
            ("env", "dev", true),
            ("env", "test", false),
            ("tier", "db", true),
        ] {
            assert_eq!(v2.targets(&BTreeMap::from([(k.into(), v.into())])), hit);
        }
        // v1 cannot hold several values; an empty array is no target at all.
        let e = PolicyDoc::from_json(&doc(PolicyDoc::FORMAT, r#"{"env": ["prod", "dev"]}"#));
        assert!(e.unwrap_err().to_string().contains("several values"));
        let e = PolicyDoc::from_json(&doc(PolicyDoc::FORMAT_V2, r#"{"env": []}"#));
        assert!(e.unwrap_err().to_string().contains("at least one value"));
        let e = PolicyDoc::from_json(&doc("blocksnap.policy/v3", r#"{"env": "x"}"#));
        assert!(e.unwrap_err().to_string().contains("policy/v3"));
    }
}
