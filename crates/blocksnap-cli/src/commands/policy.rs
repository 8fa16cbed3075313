//! `blocksnap policy …`: scheduled snapshots of tagged volumes, with retention.

use clap::Subcommand;

use crate::Ctx;
use crate::table::{Table, count};

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Create a policy: snapshot every volume carrying any target tag on each schedule.
    ///
    /// A schedule is `[NAME:] every N(h|d|w|mo|y) [at HH:MM] keep (N | N(d|w|mo|y))`, e.g.
    /// "daily: every 1d at 03:00 keep 7" or "every 1mo keep 1y"; times are UTC.
    Create {
        /// The policy's name.
        name: String,
        /// A volume tag that selects volumes; repeat for more (any one matches).
        #[arg(long = "target-tag", value_name = "K=V", value_parser = crate::parse::tag, required = true)]
        target_tags: Vec<(String, String)>,
        /// A schedule; repeat for more, one to four in all.
        #[arg(long = "schedule", value_name = "SPEC", required = true)]
        schedules: Vec<String>,
    },
    /// List policies.
    List,
    /// Show one policy.
    Show {
        /// The policy's name.
        name: String,
    },
    /// Delete a policy (the snapshots it took stay).
    Delete {
        /// The policy's name.
        name: String,
    },
    /// Take the snapshots that are due and expire old ones (run it from cron or a timer).
    Run {
        /// Act as if the time were this (RFC 3339) [default: now].
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
}

pub(crate) fn run(ctx: &Ctx<'_>, cmd: &PolicyCmd) -> anyhow::Result<()> {
    let store = ctx.open()?;
    let describe = |p: &blocksnap_store::PolicyDoc| {
        let tags: Vec<_> = p.target_pairs().map(|(k, v)| format!("{k}={v}")).collect();
        let mut t = format!("{} (targets {})", p.name, tags.join(" or "));
        for s in &p.schedules {
            t += &format!("\n  {s}");
        }
        t
    };
    match cmd {
        PolicyCmd::Create {
            name,
            target_tags,
            schedules,
        } => {
            ctx.writing(&store);
            let p = store.create_policy(&ctx.access(&store)?, name, target_tags, schedules)?;
            ctx.output(&p, || format!("created policy {}", describe(&p)))
        }
        PolicyCmd::List => {
            let ps = store.list_policies()?;
            ctx.output(&ps, || {
                if ps.is_empty() {
                    return "no policies yet: `blocksnap policy create NAME --target-tag K=V \
                            --schedule SPEC` makes one"
                        .into();
                }
                let mut t = Table::new(&["NAME", "TARGETS", "SCHEDULES", "CREATED"]);
                for p in &ps {
                    let targets: Vec<_> =
                        p.target_pairs().map(|(k, v)| format!("{k}={v}")).collect();
                    let schedules: Vec<_> = p.schedules.iter().map(ToString::to_string).collect();
                    t.row([
                        p.name.clone(),
                        targets.join(" or "),
                        schedules.join("; "),
                        p.created.clone(),
                    ]);
                }
                t.render()
            })
        }
        PolicyCmd::Show { name } => {
            let p = store.policy(name)?;
            ctx.output(&p, || describe(&p))
        }
        PolicyCmd::Delete { name } => {
            ctx.writing(&store);
            let p = store.delete_policy(name)?;
            ctx.output(&p, || {
                format!("deleted policy {} (its snapshots stay)", p.name)
            })
        }
        PolicyCmd::Run { at } => {
            ctx.writing(&store);
            let access = ctx.access(&store)?;
            let r = store.run_policies(&access, at.as_deref(), &ctx.progress)?;
            for e in &r.errors {
                ctx.note(&format!("error: {e}"));
            }
            ctx.output(&r, || {
                let mut t = String::new();
                for a in &r.taken {
                    t += &format!(
                        "took {} of {} ({}/{})\n",
                        a.snapshot, a.volume, a.policy, a.schedule
                    );
                }
                for a in &r.expired {
                    t += &format!(
                        "expired {} of {} to the trash ({}/{})\n",
                        a.snapshot, a.volume, a.policy, a.schedule
                    );
                }
                t + &format!(
                    "policy run at {}: {} taken, {} expired",
                    r.at,
                    count(r.taken.len() as u64, "snapshot"),
                    r.expired.len()
                )
            })?;
            if r.errors.is_empty() {
                Ok(())
            } else {
                anyhow::bail!(
                    "{} could not be snapshotted",
                    count(r.errors.len() as u64, "volume")
                )
            }
        }
    }
}
