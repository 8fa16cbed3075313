//! Lifecycle policies: tag-targeted schedules with retention.
//!
//! A schedule is written `[NAME:] every N(h|d|w|mo|y) [at HH:MM] keep (N | N(d|w|mo|y))`, for
//! example `daily: every 1d at 03:00 keep 7` or `every 1mo keep 1y`. Times are UTC.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::docs::{Document, validate_name, validate_tags};
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

/// `policies/NAME.json`: schedules applied to every volume carrying any of the target tags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// `blocksnap.policy/v1`.
    pub format: String,
    /// The policy's name.
    pub name: String,
    /// Volumes carrying any of these tags are targeted.
    pub target_tags: BTreeMap<String, String>,
    /// One to four schedules.
    pub schedules: Vec<Schedule>,
    /// When it was created.
    pub created: String,
}

impl Document for PolicyDoc {
    const KIND: &'static str = "policy";
    const FORMAT: &'static str = "blocksnap.policy/v1";
    fn validate(&self) -> Result<(), DocError> {
        validate_name(Self::KIND, "name", &self.name)?;
        validate_tags(Self::KIND, &self.target_tags)?;
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
}
