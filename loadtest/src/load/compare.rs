//! `compare`: alternate targets (ringway, nginx) and print ratios.

use crate::Args;

/// `compare`: alternate `run` over targets, report medians and ratios.
pub fn compare(args: &Args) -> Result<u8, String> {
    let targets: Vec<(String, String)> = args
        .all("target")
        .iter()
        .map(|t| {
            t.split_once('=')
                .map(|(n, u)| (n.to_string(), u.to_string()))
                .ok_or_else(|| format!("--target {t}: expected NAME=URL"))
        })
        .collect::<Result<_, _>>()?;
    if targets.len() < 2 {
        return Err("compare needs at least two --target NAME=URL".into());
    }
    let rounds: usize = args.num("rounds", 3)?;
    // Pass every other option through to `run`.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let passthrough: Vec<String> = std::env::args().skip(2).collect();
    let mut filtered = Vec::new();
    let mut skip = false;
    for a in &passthrough {
        if skip {
            skip = false;
            continue;
        }
        if a == "--target" || a == "--rounds" {
            skip = true;
            continue;
        }
        if a.starts_with("--target=") || a.starts_with("--rounds=") || a == "--json" {
            continue;
        }
        filtered.push(a.clone());
    }
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, (name, url)) in targets.iter().enumerate() {
            let out = std::process::Command::new(&exe)
                .arg("run")
                .arg(url)
                .args(&filtered)
                .arg("--json")
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout);
            let rate = find_float(&text, "\"rate\":").unwrap_or(0.0);
            let p50 = find_float(&text, "\"p50_ms\":").unwrap_or(0.0);
            let p99 = find_float(&text, "\"p99_ms\":").unwrap_or(0.0);
            eprintln!(
                "round {} {name}: {rate:.0}/s p50 {p50:.3} ms p99 {p99:.3} ms",
                round + 1
            );
            results[i].push((rate, p50, p99));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let mut meds = Vec::new();
    println!(
        "{:<12} {:>12} {:>10} {:>10}",
        "target", "msgs/s", "p50 ms", "p99 ms"
    );
    for (i, (name, _)) in targets.iter().enumerate() {
        let mut r: Vec<f64> = results[i].iter().map(|x| x.0).collect();
        let mut a: Vec<f64> = results[i].iter().map(|x| x.1).collect();
        let mut b: Vec<f64> = results[i].iter().map(|x| x.2).collect();
        let m = (median(&mut r), median(&mut a), median(&mut b));
        println!("{name:<12} {:>12.0} {:>10.3} {:>10.3}", m.0, m.1, m.2);
        meds.push(m);
    }
    for i in 1..targets.len() {
        println!(
            "{} / {}: throughput x{:.2}, p50 x{:.2}, p99 x{:.2}",
            targets[0].0,
            targets[i].0,
            meds[0].0 / meds[i].0.max(1e-9),
            meds[0].1 / meds[i].1.max(1e-9),
            meds[0].2 / meds[i].2.max(1e-9)
        );
    }
    Ok(0)
}

fn find_float(hay: &str, key: &str) -> Option<f64> {
    let at = hay.find(key)? + key.len();
    let end = hay[at..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .map_or(hay.len(), |e| at + e);
    hay[at..end].parse().ok()
}
