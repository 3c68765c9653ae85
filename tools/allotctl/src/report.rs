//! `allotctl report capacity`: fetches the broker's usage history
//! (`AdminService/GetUsageHistory`) and hands it to allot-sim's capacity report,
//! which writes HTML, JSON, CSV and history.json into --out, whole or not at all.

use std::path::PathBuf;

use allot_api::proto;
use allot_sim::capacity::{ReportRequest, parse_since, write_report};
use clap::{Args, Subcommand};

use crate::{Clients, CtlError, Format};

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Who used what against their quota, queue waits, idle, fragmented and stranded capacity,
    /// hot and throttled GPUs, and when the cluster runs out at the demand's trend (see docs/reports.md).
    Capacity(CapacityArgs),
}

#[derive(Debug, Args)]
pub struct CapacityArgs {
    /// How far back: a number and a unit (s, m, h, d, w), like 30d or 12h.
    #[arg(long, default_value = "30d")]
    pub since: String,
    /// Only this team (its usage and waits; cluster figures stay whole).
    #[arg(long)]
    pub team: Option<String>,
    /// Directory for report.html, report.json, the CSV tables and history.json (written whole or not at all).
    #[arg(long)]
    pub out: PathBuf,
}

/// Checks the arguments before anything reaches the network.
pub fn check(command: &ReportCommand) -> Result<(), CtlError> {
    let ReportCommand::Capacity(args) = command;
    parse_since(&args.since).map_err(|error| CtlError::Usage(error.to_string()))?;
    if let Some(team) = &args.team {
        team.parse::<allot_api::allocation::TeamName>().map_err(|error| CtlError::Usage(format!("--team: {error}")))?;
    }
    Ok(())
}

/// The largest history answer allotctl accepts (tonic's default is 4 MiB; a
/// year of a large cluster's history is more).
const MAX_HISTORY_BYTES: usize = 256 * 1024 * 1024;

pub async fn run(clients: &Clients, command: ReportCommand, broker: &str, format: Format) -> Result<String, CtlError> {
    let ReportCommand::Capacity(args) = command;
    let span = parse_since(&args.since).map_err(|error| CtlError::Usage(error.to_string()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0);
    let from_ms = now.saturating_sub(span);
    let reply = clients
        .admin()
        .max_decoding_message_size(MAX_HISTORY_BYTES)
        .get_usage_history(proto::GetUsageHistoryRequest {
            since_ms: from_ms,
            team: args.team.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    let history =
        allot_history::Export::parse(&reply.history_json).map_err(|error| CtlError::Protocol(error.to_string()))?;
    let request = ReportRequest {
        since: args.since.clone(),
        from_ms,
        to_ms: history.as_of_ms.max(from_ms),
        team: args.team.clone(),
        broker: broker.to_owned(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = write_report(&args.out, &history, &request).map_err(|error| CtlError::Usage(error.to_string()))?;
    let figures = &report.figures;
    match format {
        Format::Json => serde_json::to_string_pretty(&serde_json::json!({
            "out": args.out.display().to_string(),
            "summary": figures.summary,
        }))
        .map_err(|error| CtlError::Protocol(error.to_string())),
        Format::Table => Ok(format!(
            "capacity report written to {}\n{} teams, {:.1} GPU-hours held ({:.1} borrowed), p90 wait {}, {} preemptions, {} GPUs throttled or above 80 °C\nrun-out: {}",
            args.out.display(),
            figures.summary.teams,
            figures.summary.allocated_gpu_h,
            figures.summary.borrowed_gpu_h,
            figures.summary.wait_p90_s.map_or("none".to_owned(), |seconds| format!("{seconds:.0} s")),
            figures.summary.preemptions,
            figures.summary.flagged_gpus,
            figures.summary.runs_out,
        )),
    }
}
