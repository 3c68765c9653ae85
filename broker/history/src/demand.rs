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

/// The native-format task list, with how many tasks it has.
pub fn to_native_tasks(history: &Export) -> (String, usize) {
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
    for bucket in &history.buckets {
        let covered = bucket.covered();
        if covered == 0 {
            continue;
        }
        last_ms = bucket.until_ms;
        let mut wanted: BTreeMap<&str, usize> = open.keys().map(|team| (*team, 0)).collect();
        for (team, figures) in &bucket.teams {
            let milli_gpu = (figures.allocated().0.saturating_add(figures.queued.0)) as f64 / covered as f64;
            wanted.insert(team.as_str(), (milli_gpu / task_milli).round() as usize);
        }
        for (team, count) in wanted {
            let running = open.entry(team).or_default();
            while running.len() > count {
                if let Some(arrival) = running.pop() {
                    close(&mut text, team, arrival, bucket.start_ms);
                }
            }
            while running.len() < count {
                running.push(bucket.start_ms);
            }
        }
    }
    for (team, running) in open {
        for arrival in running {
            close(&mut text, team, arrival, last_ms);
        }
    }
    (text, tasks)
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
        let (text, count) = to_native_tasks(&history);
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
    fn tasks_take_the_typical_request_size() {
        let mut only = bucket(0, &[("a", 4, 0)]);
        only.capacity.typical_milli_gpu = 2000;
        let history = Export { format: crate::FORMAT, as_of_ms: HOUR, since_ms: 0, buckets: vec![only] };
        let (text, count) = to_native_tasks(&history);
        assert_eq!(count, 2);
        assert!(text.lines().skip(1).all(|row| row.ends_with(",0,0,2,1000,")), "{text}");
    }
}
