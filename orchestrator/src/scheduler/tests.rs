use super::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn node(name: &str, memory: u64, labels: &[(&str, &str)]) -> NodeInfo {
    NodeInfo {
        pressure: false,
        name: name.to_string(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        memory,
        ready: true,
        cordoned: false,
    }
}

fn replica(component: &str, memory: u64) -> ReplicaRequest {
    ReplicaRequest {
        component: component.to_string(),
        memory,
        required_labels: BTreeMap::new(),
        strategy: Strategy::Spread,
        prefer: None,
        avoid: Vec::new(),
    }
}

fn placed(plan: &Plan) -> Vec<usize> {
    plan.decisions
        .iter()
        .map(|d| match d {
            Decision::Placed(p) => p.node,
            Decision::Unschedulable(u) => panic!("unschedulable: {u}"),
        })
        .collect()
}

#[test]
fn replicas_of_one_component_land_on_distinct_nodes() {
    let snapshot = ClusterSnapshot {
        nodes: (0..3).map(|i| node(&format!("n{i}"), GIB, &[])).collect(),
        running: Vec::new(),
    };
    let requests = vec![replica("shop/web", 64 * MIB); 3];
    let mut nodes = placed(&Scheduler::new().plan(&snapshot, &requests));
    nodes.sort();
    assert_eq!(nodes, vec![0, 1, 2]);
}

#[test]
fn anti_affinity_finds_the_free_node_beyond_the_candidate_window() {
    let snapshot = ClusterSnapshot {
        nodes: (0..8).map(|i| node(&format!("n{i}"), GIB, &[])).collect(),
        running: (0..7).map(|i| (i, "a/c".to_string(), MIB)).collect(),
    };
    let plan = Scheduler::new()
        .candidates(2)
        .plan(&snapshot, &[replica("a/c", MIB)]);
    assert_eq!(placed(&plan), vec![7]);
}

#[test]
fn spread_prefers_empty_nodes_and_binpack_full_ones() {
    let snapshot = ClusterSnapshot {
        nodes: vec![node("busy", GIB, &[]), node("idle", GIB, &[])],
        running: vec![(0, "other/x".to_string(), 512 * MIB)],
    };
    let spread = Scheduler::new().plan(&snapshot, &[replica("a/c", MIB)]);
    assert_eq!(placed(&spread), vec![1]);
    let mut packed = replica("a/c", MIB);
    packed.strategy = Strategy::Binpack;
    let binpack = Scheduler::new().plan(&snapshot, &[packed]);
    assert_eq!(placed(&binpack), vec![0]);
}

#[test]
fn unschedulable_replicas_say_why_per_filter() {
    let mut down = node("down", 8 * GIB, &[("zone", "a")]);
    down.ready = false;
    let snapshot = ClusterSnapshot {
        nodes: vec![
            node("small1", 100 * MIB, &[("zone", "a")]),
            node("small2", 100 * MIB, &[("zone", "a")]),
            node("other-zone", 8 * GIB, &[("zone", "b")]),
            down,
        ],
        running: Vec::new(),
    };
    let mut request = replica("a/c", GIB);
    request.required_labels.insert("zone".into(), "a".into());
    let plan = Scheduler::new().plan(&snapshot, &[request]);
    let Decision::Unschedulable(why) = &plan.decisions[0] else {
        panic!("should not fit: {:?}", plan.decisions);
    };
    assert_eq!(
        why.to_string(),
        "0/4 nodes fit: 2 insufficient memory, 1 labels do not match, 1 not ready"
    );
}

#[test]
fn cordoned_nodes_take_nothing_new_and_capacity_is_respected_across_a_plan() {
    let mut cordoned = node("cordoned", 8 * GIB, &[]);
    cordoned.cordoned = true;
    let snapshot = ClusterSnapshot {
        nodes: vec![cordoned, node("n1", 300 * MIB, &[])],
        running: Vec::new(),
    };
    let plan = Scheduler::new().plan(&snapshot, &vec![replica("a/c", 100 * MIB); 4]);
    let outcomes: Vec<String> = plan
        .decisions
        .iter()
        .map(|d| match d {
            Decision::Placed(p) => format!("placed {}", p.node),
            Decision::Unschedulable(u) => u.to_string(),
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            "placed 1",
            "placed 1",
            "placed 1",
            "0/2 nodes fit: 1 cordoned, 1 insufficient memory"
        ]
    );
}

#[test]
fn a_placement_names_each_scorers_score_and_a_refusal_is_typed() {
    let nodes = vec![node("a", GIB, &[]), node("b", GIB, &[])];
    let snapshot = ClusterSnapshot {
        nodes,
        running: vec![(0, "x/c".to_string(), 512 * MIB)],
    };
    let plan = Scheduler::new().plan(&snapshot, &[replica("x/c", 256 * MIB)]);
    let Decision::Placed(placement) = &plan.decisions[0] else {
        panic!("{:?}", plan.decisions[0]);
    };
    // b: no replica of x/c yet, and emptier.
    assert_eq!(placement.node, 1);
    assert_eq!(
        placement.to_string(),
        "anti_affinity=0.00 spread=0.75 binpack=0.00 requested=0.00"
    );

    // The node that asked (holding requests for a component scaled to
    // zero) wins over an emptier one, unless it already runs a replica.
    let mut asked = replica("x/d", 256 * MIB);
    asked.prefer = Some("a".to_string());
    let plan = Scheduler::new().plan(&snapshot, &[asked.clone()]);
    assert!(matches!(&plan.decisions[0], Decision::Placed(p) if p.node == 0));
    asked.component = "x/c".to_string();
    let plan = Scheduler::new().plan(&snapshot, &[asked]);
    assert!(matches!(&plan.decisions[0], Decision::Placed(p) if p.node == 1));

    let plan = Scheduler::new().plan(&snapshot, &[replica("x/c", 2 * GIB)]);
    let Decision::Unschedulable(why) = &plan.decisions[0] else {
        panic!("{:?}", plan.decisions[0]);
    };
    assert_eq!(why.refusals[&Refusal::InsufficientMemory], 2);
    assert_eq!(why.to_string(), "0/2 nodes fit: 2 insufficient memory");
}
