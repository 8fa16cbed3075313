//! Lifecycle policies: `policy create|list|show|delete|run`.
//!
//! `policy run --at T` takes, for every schedule and every volume carrying any of the policy's
//! target tags, a snapshot when the schedule's current slot (the latest slot start at or before
//! T) has none yet — so a schedule missed while the machine was off is caught up once, not once
//! per missed slot. It then expires, per volume and schedule, the snapshots that schedule took
//! beyond its retention: they go to the trash. A policy only ever expires snapshots it took
//! (tagged `blocksnap:policy=NAME` and `blocksnap:schedule=NAME`).

use std::collections::BTreeMap;

use blocksnap_manifest::{Document, Keep, Period, PolicyDoc, Schedule, SnapshotDoc, Unit};
use jiff::{Timestamp, ToSpan, tz::TimeZone};
use serde::Serialize;

use crate::access::Access;
use crate::error::{Result, StoreError};
use crate::fsutil;
use crate::progress::Progress;
use crate::repo::Store;
use crate::repo::layout::Kind;
use crate::snapshot::create::SnapshotOptions;

/// Tag naming the policy that took a snapshot.
pub const TAG_POLICY: &str = "blocksnap:policy";
/// Tag naming the schedule that took a snapshot.
pub const TAG_SCHEDULE: &str = "blocksnap:schedule";

/// One snapshot a policy run took or expired.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyAction {
    /// The policy.
    pub policy: String,
    /// The schedule.
    pub schedule: String,
    /// The volume.
    pub volume: String,
    /// The snapshot.
    pub snapshot: String,
}

/// What `policy run` did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PolicyRunReport {
    /// The time the run acted for.
    pub at: String,
    /// Snapshots taken.
    pub taken: Vec<PolicyAction>,
    /// Snapshots expired to the trash.
    pub expired: Vec<PolicyAction>,
    /// Volumes that could not be snapshotted, and why.
    pub errors: Vec<String>,
}

/// Parses an RFC 3339 time.
pub fn parse_time(text: &str) -> Result<Timestamp> {
    text.parse::<Timestamp>().map_err(|e| {
        StoreError::Usage(format!(
            "'{text}' is not an RFC 3339 time such as 2026-11-23T03:00:00Z ({e})"
        ))
    })
}

impl Store {
    /// Creates a policy from `K=V` target tags and one to four schedule specs. Every pair is
    /// kept, also several values of one key: a volume carrying any of them is targeted.
    pub fn create_policy(
        &self,
        access: &Access,
        name: &str,
        target_tags: &[(String, String)],
        schedules: &[String],
    ) -> Result<PolicyDoc> {
        self.require_writable("policy create")?;
        let schedules = schedules
            .iter()
            .map(|s| Schedule::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::Usage)?;
        let target_tags = PolicyDoc::target_tags_from(target_tags.iter().cloned());
        let key = self.document_key()?;
        let mut doc = PolicyDoc {
            format: PolicyDoc::format_for(&target_tags).into(),
            name: name.into(),
            target_tags,
            schedules,
            created: fsutil::now_rfc3339(),
            key,
            mac: None,
        };
        doc.validate()
            .map_err(|e| StoreError::Usage(e.to_string()))?;
        let codec = self.codec(access, key)?;
        self.seal(&codec, &mut doc)?;
        self.create_doc(Kind::Policy, name, &doc)?;
        Ok(doc)
    }

    /// Every policy, by name.
    pub fn list_policies(&self) -> Result<Vec<PolicyDoc>> {
        let mut v: Vec<PolicyDoc> = self.list_docs(Kind::Policy)?;
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// One policy.
    pub fn policy(&self, name: &str) -> Result<PolicyDoc> {
        self.list_policies()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| StoreError::NotFound {
                kind: "policy",
                name: name.into(),
                hint: "; see `blocksnap policy list`".into(),
            })
    }

    /// Deletes a policy (its snapshots stay).
    pub fn delete_policy(&self, name: &str) -> Result<PolicyDoc> {
        self.require_writable("policy delete")?;
        let doc = self.policy(name)?;
        self.delete_object(&Kind::Policy.key(name))?;
        Ok(doc)
    }

    /// Runs every policy for time `at` (default: now).
    pub fn run_policies(
        &self,
        access: &Access,
        at: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<PolicyRunReport> {
        self.require_writable("policy run")?;
        let at = match at {
            Some(t) => parse_time(t)?,
            None => Timestamp::now(),
        };
        let mut report = PolicyRunReport {
            at: fsutil::rfc3339(at),
            ..Default::default()
        };
        let volumes = self.list_volumes()?;
        // A volume set aside by `repair documents` has no tags any more: no policy selects it.
        self.warn_quarantined_volumes(progress)?;
        for policy in self.list_policies()? {
            // What a policy keeps decides what prune deletes: one changed by someone without
            // the key is not run.
            self.verify_with_access(access, &policy)?;
            let targets: Vec<_> = volumes.iter().filter(|v| policy.targets(&v.tags)).collect();
            for schedule in &policy.schedules {
                let slot = slot_start(schedule, at)?;
                for volume in &targets {
                    crate::cancel::check()?;
                    let taken = self.taken_by(&policy.name, &schedule.name, &volume.name)?;
                    let due = taken
                        .last()
                        .is_none_or(|s| parse_time(&s.created).map(|c| c < slot).unwrap_or(true));
                    if !due {
                        continue;
                    }
                    let mut tags = volume.tags.clone();
                    tags.insert(TAG_POLICY.into(), policy.name.clone());
                    tags.insert(TAG_SCHEDULE.into(), schedule.name.clone());
                    let opts = SnapshotOptions {
                        source: volume.path.clone().into(),
                        volume: Some(volume.name.clone()),
                        tags,
                        description: format!("policy {} schedule {}", policy.name, schedule.name),
                        created: Some(fsutil::rfc3339(at)),
                        ..SnapshotOptions::default()
                    };
                    match self.snapshot(access, &opts, progress) {
                        Ok(r) => report.taken.push(action(
                            &policy,
                            schedule,
                            &volume.name,
                            r.id.to_string(),
                        )),
                        Err(StoreError::Interrupted) => return Err(StoreError::Interrupted),
                        Err(e) => report.errors.push(format!(
                            "policy {} volume {}: {e}",
                            policy.name, volume.name
                        )),
                    }
                }
                // Expire what this schedule took beyond its retention, volume by volume.
                for volume in &targets {
                    let taken = self.taken_by(&policy.name, &schedule.name, &volume.name)?;
                    for old in expired(&taken, schedule.keep, at)? {
                        if let Some(image) = self.images_using(old.id)?.first() {
                            progress.message(&format!(
                                "kept {} of {} past its retention: image '{}' maps it",
                                old.id, volume.name, image.name
                            ));
                            continue;
                        }
                        self.delete_snapshot(access, &old.id.to_string())?;
                        report.expired.push(action(
                            &policy,
                            schedule,
                            &volume.name,
                            old.id.to_string(),
                        ));
                    }
                }
            }
        }
        self.warn_damaged(progress);
        Ok(report)
    }

    /// The snapshots one schedule of one policy took of one volume, oldest first.
    fn taken_by(&self, policy: &str, schedule: &str, volume: &str) -> Result<Vec<SnapshotDoc>> {
        let tags = BTreeMap::from([
            (TAG_POLICY.to_string(), policy.to_string()),
            (TAG_SCHEDULE.to_string(), schedule.to_string()),
        ]);
        self.find_snapshots(Some(volume), &tags)
    }
}

fn action(policy: &PolicyDoc, schedule: &Schedule, volume: &str, snapshot: String) -> PolicyAction {
    PolicyAction {
        policy: policy.name.clone(),
        schedule: schedule.name.clone(),
        volume: volume.into(),
        snapshot,
    }
}

/// The snapshots beyond retention, given oldest first.
fn expired(taken: &[SnapshotDoc], keep: Keep, at: Timestamp) -> Result<Vec<SnapshotDoc>> {
    Ok(match keep {
        Keep::Count(n) => taken.iter().rev().skip(n as usize).cloned().collect(),
        Keep::Age(p) => {
            let cutoff = shift(at, p, -1)?;
            let mut old = Vec::new();
            for s in taken {
                if parse_time(&s.created)? < cutoff {
                    old.push(s.clone());
                }
            }
            old
        }
    })
}

/// `t` moved by `sign` × the period, in calendar terms for months and years.
fn shift(t: Timestamp, p: Period, sign: i64) -> Result<Timestamp> {
    let n = i64::from(p.n) * sign;
    let span = match p.unit {
        Unit::Hour => n.hours(),
        Unit::Day => n.days(),
        Unit::Week => n.weeks(),
        Unit::Month => n.months(),
        Unit::Year => n.years(),
    };
    t.to_zoned(TimeZone::UTC)
        .checked_add(span)
        .map(|z| z.timestamp())
        .map_err(|e| StoreError::Usage(format!("time out of range: {e}")))
}

/// The start of the schedule's slot that contains `at`: slots are every N units, aligned to the
/// Unix epoch (hours, days, weeks) or to January 1970 (months, years), at the schedule's time
/// of day.
fn slot_start(s: &Schedule, at: Timestamp) -> Result<Timestamp> {
    let at_secs = at.as_second();
    let offset = i64::from(s.at_minutes.unwrap_or(0)) * 60;
    let n = i64::from(s.every.n);
    let fixed = |period: i64| {
        let off = offset % period;
        let slot = (at_secs - off).div_euclid(period) * period + off;
        Timestamp::from_second(slot)
            .map_err(|e| StoreError::Usage(format!("time out of range: {e}")))
    };
    match s.every.unit {
        Unit::Hour => fixed(n * 3600),
        Unit::Day => fixed(n * 86_400),
        Unit::Week => fixed(n * 7 * 86_400),
        Unit::Month | Unit::Year => {
            let z = at.to_zoned(TimeZone::UTC);
            let months_per = if s.every.unit == Unit::Month {
                n
            } else {
                12 * n
            };
            let idx = (i64::from(z.year()) - 1970) * 12 + i64::from(z.month()) - 1;
            let mut slot_idx = idx.div_euclid(months_per) * months_per;
            loop {
                let y = 1970 + slot_idx.div_euclid(12);
                let m = slot_idx.rem_euclid(12) + 1;
                let start = jiff::civil::date(y as i16, m as i8, 1)
                    .at((offset / 3600) as i8, ((offset % 3600) / 60) as i8, 0, 0)
                    .to_zoned(TimeZone::UTC)
                    .map_err(|e| StoreError::Usage(format!("time out of range: {e}")))?
                    .timestamp();
                if start <= at {
                    return Ok(start);
                }
                slot_idx -= months_per;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn slots() {
        let daily = Schedule::parse("d: every 1d at 03:00 keep 7").unwrap();
        assert_eq!(
            slot_start(&daily, t("2026-11-23T05:00:00Z")).unwrap(),
            t("2026-11-23T03:00:00Z")
        );
        assert_eq!(
            slot_start(&daily, t("2026-11-23T02:59:00Z")).unwrap(),
            t("2026-11-22T03:00:00Z")
        );
        let monthly = Schedule::parse("m: every 1mo keep 1y").unwrap();
        assert_eq!(
            slot_start(&monthly, t("2026-11-23T05:00:00Z")).unwrap(),
            t("2026-11-01T00:00:00Z")
        );
        let quarterly = Schedule::parse("q: every 3mo at 01:00 keep 4").unwrap();
        assert_eq!(
            slot_start(&quarterly, t("2026-11-01T00:30:00Z")).unwrap(),
            t("2026-10-01T01:00:00Z")
        );
        let six = Schedule::parse("s: every 6h keep 4").unwrap();
        assert_eq!(
            slot_start(&six, t("2026-11-23T13:10:00Z")).unwrap(),
            t("2026-11-23T12:00:00Z")
        );
    }
}
