//! Prometheus metrics: the text of `GET /metrics`. Counters are
//! process-wide atomics touched per connection or per refusal, never per
//! admitted message.

use crate::worker::Worker;

/// `GET /metrics`: Prometheus text format. Counters are process-wide atomics
/// touched per connection or per refusal, never per admitted message.
pub fn render(worker: &Worker, full: bool) -> String {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let shared = &worker.admission.shared;
    let mut m = String::new();
    let _ = writeln!(m, "# HELP ringway_connections Open client connections.");
    let _ = writeln!(m, "# TYPE ringway_connections gauge");
    let _ = writeln!(
        m,
        "ringway_connections {}",
        shared.connections.load(Relaxed)
    );
    let _ = writeln!(
        m,
        "# HELP ringway_rejections_total Refusals by admission control, by reason."
    );
    let _ = writeln!(m, "# TYPE ringway_rejections_total counter");
    for r in crate::policy::Reason::ALL {
        let _ = writeln!(
            m,
            "ringway_rejections_total{{reason=\"{}\"}} {}",
            r.name(),
            shared.rejections.get(r)
        );
    }
    let _ = writeln!(
        m,
        "# HELP ringway_unmatched_answers_total Node answers on shared connections that matched no request in flight."
    );
    let _ = writeln!(m, "# TYPE ringway_unmatched_answers_total counter");
    let _ = writeln!(
        m,
        "ringway_unmatched_answers_total {}",
        shared.unmatched_answers.load(Relaxed)
    );
    let reloads = worker.core.generations.outcome();
    let _ = writeln!(
        m,
        "# HELP ringway_config_generation The configuration in use: 1 at start, one more per reload that took effect."
    );
    let _ = writeln!(m, "# TYPE ringway_config_generation gauge");
    let _ = writeln!(m, "ringway_config_generation {}", reloads.generation);
    let _ = writeln!(
        m,
        "# HELP ringway_reloads_total Reloads (SIGHUP) by outcome: ok, or refused (the file had an error; the running configuration stayed)."
    );
    let _ = writeln!(m, "# TYPE ringway_reloads_total counter");
    let _ = writeln!(m, "ringway_reloads_total{{outcome=\"ok\"}} {}", reloads.ok);
    let _ = writeln!(
        m,
        "ringway_reloads_total{{outcome=\"refused\"}} {}",
        reloads.failed
    );
    let h = worker.pool.health();
    let _ = writeln!(
        m,
        "# HELP ringway_degraded Whether no node passes its health checks (sessions go to the best candidate anyway)."
    );
    let _ = writeln!(m, "# TYPE ringway_degraded gauge");
    let _ = writeln!(m, "ringway_degraded {}", u8::from(h.degraded()));
    let nodes = worker.pool.nodes();
    node_gauge(
        &mut m,
        nodes,
        full,
        "ringway_node_up",
        "Whether a node passes its health checks.",
        |i| u64::from(h.is_up(i)),
    );
    node_gauge(
        &mut m,
        nodes,
        full,
        "ringway_node_head",
        "Best block seen on each node.",
        |i| h.head(i),
    );
    m
}

/// One gauge with a sample per node, labelled by its url (in full on the
/// private metrics port) and role.
fn node_gauge(
    m: &mut String,
    nodes: &[crate::config::NodeConfig],
    full: bool,
    name: &str,
    help: &str,
    value: impl Fn(usize) -> u64,
) {
    use std::fmt::Write;
    let _ = writeln!(m, "# HELP {name} {help}");
    let _ = writeln!(m, "# TYPE {name} gauge");
    for (i, n) in nodes.iter().enumerate() {
        let _ = writeln!(
            m,
            "{name}{{url=\"{}\",role=\"{}\"}} {}",
            if full { n.url.clone() } else { n.public_name() },
            n.role.name(),
            value(i)
        );
    }
}
