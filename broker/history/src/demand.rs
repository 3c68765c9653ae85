//! A usage history as a demand for sizing: each team's GPUs held plus waiting,
//! bucket by bucket, turned into a task list in the simulator's native format
//! (`name,team,arrival_s,departure_s,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec`).
//!
//! Tasks are of the typical request's size (the history's, else one GPU). When
//! a team's demand rises in a bucket, tasks arrive at the bucket's start; when
//! it falls, the latest tasks depart; so the tasks hold, bucket by bucket, the
//! team's mean demand rounded to whole tasks. The history records GPUs only:
//! the tasks ask for no CPU or memory, and accept any GPU model.

use std::collections::BTreeMap;

use crate::Export;

/// The most GPUs a native-format task may ask for.
const MAX_TASK_GPUS: u32 = 8;

/// The most tasks a history becomes. A history is a file a person passes to
/// `allotctl size`: one bucket claiming 2^64 GPU-milliseconds asked for billions
/// of tasks (gigabytes, then the machine's memory) before this bound.
pub const MAX_TASKS: usize = 1_000_000;

/// The native-format task list, with how many tasks it has, or why the history
/// holds more demand than the sizing tool models.
pub fn to_native_tasks(history: &Export) -> Result<(String, usize), String> {
    let typical = history
        .buckets
        .iter()
        .rev()
        .map(|bucket| bucket.capacity.typical_milli_gpu)
        .find(|typical| *typical > 0)
        .unwrap_or(1000);
    let (num_gpu, gpu_milli) =
        if typical >= 1000 { ((typical / 1000).clamp(1, MAX_TASK_GPUS), 1000) } else { (1, typical) };
    let task_milli = f64::from(num_gpu * gpu_milli);
    let origin = history.buckets.first().map_or(0, |bucket| bucket.start_ms);
    let seconds = |ms: u64| (ms.saturating_sub(origin)) as f64 / 1000.0;
    let mut text = String::from("name,team,arrival_s,departure_s,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n");
    // Open tasks per team: their arrival times, latest last.
    let mut open: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut tasks = 0usize;
    let mut close = |text: &mut String, team: &str, arrival_ms: u64, departure_ms: u64| {
        text.push_str(&format!(
            "{team}-{tasks},{team},{},{},0,0,{num_gpu},{gpu_milli},\n",
            seconds(arrival_ms),
            seconds(departure_ms)
        ));
        tasks += 1;
    };
    let mut last_ms = origin;
    let mut created = 0usize;
    for bucket in &history.buckets {
        let covered = bucket.covered();
        if covered == 0 {
            continue;
        }
        last_ms = bucket.until_ms;
        let mut wanted: BTreeMap<&str, usize> = open.keys().map(|team| (*team, 0)).collect();
        for (team, figures) in &bucket.teams {
            let milli_gpu = (figures.allocated().0.saturating_add(figures.queued.0)) as f64 / covered as f64;
            let count = (milli_gpu / task_milli).round();
            if count > MAX_TASKS as f64 {
                return Err(too_much(team, bucket.start_ms, milli_gpu));
            }
            wanted.insert(team.as_str(), count as usize);
        }
        for (team, count) in wanted {
            let running = open.entry(team).or_default();
            while running.len() > count {
                if let Some(arrival) = running.pop() {
                    close(&mut text, team, arrival, bucket.start_ms);
                }
            }
            if created + count.saturating_sub(running.len()) > MAX_TASKS {
                return Err(too_much(team, bucket.start_ms, count as f64 * task_milli));
            }
            while running.len() < count {
                running.push(bucket.start_ms);
                created += 1;
            }
        }
    }
    for (team, running) in open {
        for arrival in running {
            close(&mut text, team, arrival, last_ms);
        }
    }
    Ok((text, tasks))
}

fn too_much(team: &str, start_ms: u64, milli_gpu: f64) -> String {
    format!(
        "the bucket from {} UTC: team {team} holds or waits for {:.0} GPUs, and with the buckets before it the history \
         would be more than {MAX_TASKS} tasks; is it a usage history from a broker?",
        crate::date_time(start_ms),
        milli_gpu / 1000.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::{Bucket, GpuMs, ModelUse};

    const HOUR: u64 = 3_600_000;

    fn bucket(index: u64, team_gpus: &[(&str, u64, u64)]) -> Bucket {
        let mut bucket = Bucket::new(index * HOUR, HOUR);
        bucket.until_ms = (index + 1) * HOUR;
        for (team, held, queued) in team_gpus {
            let figures = bucket.teams.entry((*team).into()).or_default();
            figures
                .models
                .insert("H100".into(), ModelUse { allocated: GpuMs::of(held * 1000, HOUR), borrowed: GpuMs(0) });
            figures.queued = GpuMs::of(queued * 1000, HOUR);
        }
        bucket
    }

    #[test]
    fn demand_steps_become_tasks_that_arrive_and_depart_with_them() {
        // a: 2 GPUs, then 3 (2 held + 1 waiting), then 1; b: 1 GPU in the second hour.
        let history = Export {
            format: crate::FORMAT,
            as_of_ms: 3 * HOUR,
            since_ms: 0,
            buckets: vec![bucket(0, &[("a", 2, 0)]), bucket(1, &[("a", 2, 1), ("b", 1, 0)]), bucket(2, &[("a", 1, 0)])],
        };
        let (text, count) = to_native_tasks(&history).expect("a demand");
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(count, 4);
        assert_eq!(
            rows,
            [
                "a-0,a,3600,7200,0,0,1,1000,",
                "a-1,a,0,7200,0,0,1,1000,",
                "b-2,b,3600,7200,0,0,1,1000,",
                "a-3,a,0,10800,0,0,1,1000,",
            ]
        );
    }

    #[test]
    fn a_history_claiming_more_demand_than_can_be_replayed_is_refused() {
        // One hour in which team a held 2^64 GPU-milliseconds: 5 billion tasks.
        let mut huge = bucket(0, &[("a", 1, 0)]);
        if let Some(figures) = huge.teams.get_mut("a") {
            figures.queued = GpuMs(u64::MAX);
        }
        let history = Export { format: crate::FORMAT, as_of_ms: HOUR, since_ms: 0, buckets: vec![huge] };
        let error = to_native_tasks(&history).expect_err("too much");
        assert!(error.contains("team a holds or waits for"), "{error}");
        // Buckets that each stay under the bound add up past it too.
        let buckets = vec![bucket(0, &[("a", 600_000, 0)]), bucket(1, &[("a", 0, 0)]), bucket(2, &[("a", 600_000, 0)])];
        let history = Export { format: crate::FORMAT, as_of_ms: 3 * HOUR, since_ms: 0, buckets };
        assert!(to_native_tasks(&history).is_err());
    }

    #[test]
    fn tasks_take_the_typical_request_size() {
        let mut only = bucket(0, &[("a", 4, 0)]);
        only.capacity.typical_milli_gpu = 2000;
        let history = Export { format: crate::FORMAT, as_of_ms: HOUR, since_ms: 0, buckets: vec![only] };
        let (text, count) = to_native_tasks(&history).expect("a demand");
        assert_eq!(count, 2);
        assert!(text.lines().skip(1).all(|row| row.ends_with(",0,0,2,1000,")), "{text}");
    }
}
