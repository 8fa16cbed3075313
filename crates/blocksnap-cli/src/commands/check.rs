//! `blocksnap check`: verify the store; exit 4 on damage, 5 when not everything was verified.

use blocksnap_store::SnapshotId;
use clap::Args;

use crate::table::plural;
use crate::{Ctx, DamageFound, NotVerified};

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Also decrypt every chunk of every pack and verify it against its id.
    #[arg(long)]
    pub(crate) read_data: bool,
}

pub(crate) fn run(ctx: &Ctx<'_>, a: &CheckArgs) -> anyhow::Result<()> {
    let store = ctx.open()?;
    let access = ctx.access(&store)?;
    let r = store.check(&access, a.read_data, &ctx.progress)?;
    // What was not verified is said even under -q: a green result would be false.
    for s in &r.not_verified {
        say!("not verified: {s}");
    }
    if r.unindexed_chunks > 0 {
        ctx.note(&format!(
            "note: {} stored chunks are not in the index (left by an interrupted run?); \
             `blocksnap repair index` adds them",
            r.unindexed_chunks
        ));
    }
    for n in &r.notes {
        ctx.note(&format!("note: {n}"));
    }
    ctx.output(&r, || check_text(&r, a.read_data))?;
    if !r.problems.is_empty() {
        Err(DamageFound.into())
    } else if !r.not_verified.is_empty() {
        Err(NotVerified.into())
    } else {
        Ok(())
    }
}

/// `check`'s report for people: the problems, then a summary whose counts add up, then what to
/// do.
fn check_text(r: &blocksnap_store::CheckReport, read_data: bool) -> String {
    let ids = |v: &[SnapshotId]| -> String {
        const SHOWN: usize = 10;
        let mut s: Vec<String> = v.iter().take(SHOWN).map(ToString::to_string).collect();
        if v.len() > SHOWN {
            s.push(format!("and {} more", v.len() - SHOWN));
        }
        s.join(", ")
    };
    let mut t = String::new();
    for p in &r.problems {
        t += &format!("problem: {p}\n");
    }
    t += &format!("snapshots: {} checked", r.snapshots);
    if r.snapshots > 0 {
        t += &format!(
            ", {} damaged{}, {} intact{}",
            r.damaged_snapshots.len(),
            if r.damaged_snapshots.is_empty() {
                String::new()
            } else {
                format!(" ({})", ids(&r.damaged_snapshots))
            },
            r.intact_snapshots.len(),
            if r.intact_snapshots.is_empty() {
                String::new()
            } else {
                format!(" ({})", ids(&r.intact_snapshots))
            },
        );
    }
    if !r.unverified_snapshots.is_empty() {
        t += &format!(
            "; {} not verified ({})",
            r.unverified_snapshots.len(),
            ids(&r.unverified_snapshots)
        );
    }
    t += &format!("\npacks: {}", r.packs);
    if !r.damaged_packs.is_empty() {
        t += &format!(", {} damaged", r.damaged_packs.len());
    }
    if !r.missing_packs.is_empty() {
        t += &format!(", {} missing", r.missing_packs.len());
    }
    t += &format!(
        "\nchunks: {}: {} verified, {} damaged, {} not verified{}",
        r.chunks,
        r.chunks_verified,
        r.chunks_damaged,
        r.chunks_not_verified,
        if read_data {
            ""
        } else {
            " (data not read: `--read-data` verifies it)"
        }
    );
    t += &format!("\nimages: {}", r.images);
    if !r.damaged_images.is_empty() {
        t += &format!(", {} damaged", r.damaged_images.len());
    }
    t += &format!(
        "\nresult: {}",
        match (r.problems.len(), r.not_verified.len()) {
            (0, 0) => "no problems".to_string(),
            (0, n) => format!(
                "no problems found, but not everything was verified ({n} {}, on stderr): \
                 exit 5, could not verify",
                plural(n as u64, "item")
            ),
            (p, 0) => format!("{p} {}: exit 4, damage found", plural(p as u64, "problem")),
            (p, n) => format!(
                "{p} {}; not everything was verified ({n} {}, on stderr): exit 4, damage found",
                plural(p as u64, "problem"),
                plural(n as u64, "item")
            ),
        }
    );
    if !r.next_steps.is_empty() {
        t += "\nwhat to do:";
        for (i, s) in r.next_steps.iter().enumerate() {
            t += &format!("\n  {}. {s}", i + 1);
        }
    }
    t
}
