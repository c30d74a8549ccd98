//! The assignment rule: from the registry's list of nodes, which node should lead each
//! election. Every node computes it alike from the same list, so it is a pure function of
//! that list, with every tie broken by a hash that does not depend on the process.
//!
//! Nodes that share elections, directly or through others, form a group; within a group of
//! `n` nodes and `m` elections, `m mod n` nodes may lead `⌈m / n⌉` elections and the others
//! `⌊m / n⌋` — their quotas. The nodes leading the most now get the larger quotas, so that as
//! few elections as possible move. Then:
//!
//! 1. **Sticky**: each election stays with the node that leads it now, as long as that node
//!    is within its quota (a node above it keeps those of its elections that rank first for
//!    it). The node leading an election is the one claiming it with the highest fencing token,
//!    so a stale claim (a node frozen past its lease that has not noticed yet) loses to the
//!    term that replaced it.
//! 2. **Least loaded**: every other election goes to a node of the group that runs it, below
//!    its quota if any is, else the least loaded, ties by the hash of election and node.
//!    Elections with the fewest candidates are placed first.
//!
//! A node that froze and came back therefore does not take its elections back (their new
//! leaders are within their quotas), while a node that joins takes its share from the nodes
//! above their new quotas.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::Member;

/// Which node should lead each election, by election name.
pub type Assignment = BTreeMap<String, String>;

/// The assignment for `members`, the live nodes as the registry lists them.
pub fn assign(members: &[Member]) -> Assignment {
    let mut leaders: BTreeMap<&str, (u64, &str)> = BTreeMap::new();
    for member in members {
        for (election, &token) in &member.state.leading {
            // A node leading an election it no longer runs is giving it up.
            if !member.state.elections.contains(election) {
                continue;
            }
            let leader = leaders
                .entry(election)
                .or_insert((token, member.node.as_str()));
            if token > leader.0 {
                *leader = (token, member.node.as_str());
            }
        }
    }
    let mut assignment = Assignment::new();
    for group in groups(members) {
        assign_group(&group, &leaders, &mut assignment);
    }
    assignment
}

/// The members that run elections, in groups that share none with each other.
fn groups(members: &[Member]) -> Vec<Vec<&Member>> {
    let mut groups: Vec<(BTreeSet<&str>, Vec<&Member>)> = Vec::new();
    for member in members {
        if member.state.elections.is_empty() {
            continue;
        }
        let mut elections: BTreeSet<&str> =
            member.state.elections.iter().map(String::as_str).collect();
        let mut nodes = vec![member];
        let mut index = 0;
        while index < groups.len() {
            if groups[index].0.is_disjoint(&elections) {
                index += 1;
            } else {
                let (shared, others) = groups.swap_remove(index);
                elections.extend(shared);
                nodes.extend(others);
            }
        }
        groups.push((elections, nodes));
    }
    groups.into_iter().map(|(_, nodes)| nodes).collect()
}

/// Assigns the elections of one group, given who leads what now.
fn assign_group(
    members: &[&Member],
    leaders: &BTreeMap<&str, (u64, &str)>,
    assignment: &mut Assignment,
) {
    let elections: BTreeSet<&str> = members
        .iter()
        .flat_map(|m| m.state.elections.iter().map(String::as_str))
        .collect();
    let leading = |node: &str| -> Vec<&str> {
        let mut led: Vec<&str> = leaders
            .iter()
            .filter(|(election, (_, leader))| *leader == node && elections.contains(*election))
            .map(|(election, _)| *election)
            .collect();
        led.sort_by_key(|election| (rank(election, node), *election));
        led
    };
    let (base, extra) = (
        elections.len() / members.len(),
        elections.len() % members.len(),
    );
    let mut order: Vec<(&Member, Vec<&str>)> =
        members.iter().map(|m| (*m, leading(&m.node))).collect();
    // The nodes leading the most get the larger quotas.
    order.sort_by(|(a, led_a), (b, led_b)| {
        let key = |m: &Member, led: &[&str]| (Reverse(led.len()), rank("", &m.node));
        key(a, led_a)
            .cmp(&key(b, led_b))
            .then_with(|| a.node.cmp(&b.node))
    });
    let mut quota: BTreeMap<&str, usize> = BTreeMap::new();
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    for (place, (member, led)) in order.iter().enumerate() {
        let node = member.node.as_str();
        let own = base + usize::from(place < extra);
        quota.insert(node, own);
        for election in led.iter().take(own) {
            assignment.insert((*election).to_owned(), node.to_owned());
        }
        load.insert(node, led.len().min(own));
    }
    let runs = |election: &str| -> Vec<&Member> {
        members
            .iter()
            .copied()
            .filter(|m| m.state.elections.contains(election))
            .collect()
    };
    let mut free: Vec<&str> = elections
        .iter()
        .copied()
        .filter(|election| !assignment.contains_key(*election))
        .collect();
    free.sort_by_key(|election| (runs(election).len(), *election));
    for election in free {
        let chosen = runs(election).into_iter().min_by_key(|m| {
            let node = m.node.as_str();
            let load = load[node];
            (load >= quota[node], load, rank(election, node), node)
        });
        if let Some(chosen) = chosen {
            *load.entry(&chosen.node).or_default() += 1;
            assignment.insert(election.to_owned(), chosen.node.clone());
        }
    }
}

/// A hash of `election` and `node` that every process computes alike (64-bit FNV-1a), to
/// break ties the same way everywhere without favouring one node for every election.
fn rank(election: &str, node: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in election.bytes().chain([0xff]).chain(node.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeState;

    fn member(node: &str, elections: &[&str], leading: &[(&str, u64)]) -> Member {
        Member {
            node: node.to_owned(),
            api: None,
            state: NodeState {
                elections: elections.iter().map(|e| (*e).to_owned()).collect(),
                leading: leading.iter().map(|(e, t)| ((*e).to_owned(), *t)).collect(),
            },
        }
    }

    const SIX: [&str; 6] = ["p1", "p2", "p3", "p4", "p5", "p6"];

    fn loads(assignment: &Assignment) -> BTreeMap<&str, usize> {
        let mut loads = BTreeMap::new();
        for node in assignment.values() {
            *loads.entry(node.as_str()).or_default() += 1;
        }
        loads
    }

    /// Runs the cluster until nothing moves: each node gives up what is assigned elsewhere,
    /// then takes what is assigned to it and free (as the election would let it), one step at
    /// a time. Returns how many times each election changed leader.
    fn settle(members: &mut [Member]) -> BTreeMap<String, usize> {
        let mut moves = BTreeMap::new();
        let mut token = 1000;
        for _ in 0..20 {
            let assignment = assign(members);
            let mut changed = false;
            for member in members.iter_mut() {
                let node = member.node.clone();
                let before = member.state.leading.len();
                member
                    .state
                    .leading
                    .retain(|election, _| assignment.get(election) == Some(&node));
                changed |= member.state.leading.len() != before;
            }
            let led: BTreeSet<String> = members
                .iter()
                .flat_map(|m| m.state.leading.keys().cloned())
                .collect();
            for member in members.iter_mut() {
                for (election, node) in &assignment {
                    if *node == member.node && !led.contains(election) {
                        token += 1;
                        member.state.leading.insert(election.clone(), token);
                        *moves.entry(election.clone()).or_default() += 1;
                        changed = true;
                    }
                }
            }
            if !changed {
                return moves;
            }
        }
        panic!("the cluster did not settle: {members:?}");
    }

    #[test]
    fn six_elections_spread_two_by_two_over_three_fresh_nodes() {
        let members = ["a", "b", "c"].map(|n| member(n, &SIX, &[]));
        let assignment = assign(&members);
        assert_eq!(assignment.len(), 6);
        assert_eq!(
            loads(&assignment).values().collect::<Vec<_>>(),
            [&2, &2, &2]
        );
        let reversed: Vec<Member> = members.iter().rev().cloned().collect();
        assert_eq!(
            assign(&reversed),
            assignment,
            "the order of the list does not matter"
        );
    }

    #[test]
    fn a_dead_nodes_elections_go_to_the_survivors_and_nothing_else_moves() {
        let mut members = ["a", "b", "c"].map(|n| member(n, &SIX, &[])).to_vec();
        settle(&mut members);
        let before: Vec<BTreeMap<String, u64>> =
            members.iter().map(|m| m.state.leading.clone()).collect();
        members.remove(0);
        let moves = settle(&mut members);
        assert_eq!(
            moves.len(),
            2,
            "only the dead node's elections move: {moves:?}"
        );
        for (member, led) in members.iter().zip(&before[1..]) {
            assert_eq!(member.state.leading.len(), 3);
            assert!(led.keys().all(|e| member.state.leading.contains_key(e)));
        }
    }

    #[test]
    fn a_joining_node_takes_its_share_each_election_moving_once() {
        let mut members = vec![
            member("b", &SIX, &[("p1", 1), ("p2", 2), ("p3", 3)]),
            member("c", &SIX, &[("p4", 4), ("p5", 5), ("p6", 6)]),
        ];
        members.push(member("a", &SIX, &[]));
        let moves = settle(&mut members);
        assert_eq!(moves.len(), 2, "{moves:?}");
        assert!(moves.values().all(|n| *n == 1), "{moves:?}");
        for member in &members {
            assert_eq!(member.state.leading.len(), 2, "{members:?}");
        }
    }

    #[test]
    fn a_node_back_from_a_freeze_does_not_take_its_election_back() {
        // `a` led with token 7 and froze; `b` took over with token 9. `a` registers again,
        // still claiming its old term.
        let members = [
            member("a", &["relay"], &[("relay", 7)]),
            member("b", &["relay"], &[("relay", 9)]),
            member("c", &["relay"], &[]),
        ];
        assert_eq!(assign(&members)["relay"], "b");
        let members = [
            member("a", &["relay"], &[]),
            member("b", &["relay"], &[("relay", 9)]),
            member("c", &["relay"], &[]),
        ];
        assert_eq!(assign(&members)["relay"], "b");
    }

    #[test]
    fn every_election_goes_to_a_node_that_runs_it_and_groups_are_balanced_apart() {
        let members = [
            member("a", &SIX, &[]),
            member("b", &SIX, &[]),
            member("x", &["other"], &[]),
            member("y", &["other"], &[]),
            member("z", &["only-z", "p1"], &[]),
        ];
        let assignment = assign(&members);
        assert_eq!(assignment.len(), 8);
        assert_eq!(assignment["only-z"], "z");
        assert!(["x", "y"].contains(&assignment["other"].as_str()));
        let loads = loads(&assignment);
        // a, b and z share p1: seven elections over three nodes.
        for node in ["a", "b", "z"] {
            assert!(loads[node] <= 3, "{assignment:?}");
        }
        let nothing = [member("idle", &[], &[])];
        assert!(assign(&nothing).is_empty());
    }

    #[test]
    fn a_stale_claim_on_an_election_not_run_any_more_is_ignored() {
        let members = [
            member("a", &["p1"], &[("p2", 5)]),
            member("b", &["p1", "p2"], &[]),
        ];
        let assignment = assign(&members);
        assert_eq!(assignment["p2"], "b");
    }

    #[test]
    fn no_node_leads_more_than_its_share_after_any_sequence_of_joins_and_deaths() {
        // A deterministic walk through memberships from one to five nodes.
        let names = ["a", "b", "c", "d", "e"];
        let mut members: Vec<Member> = Vec::new();
        let mut step: u64 = 7;
        for _ in 0..40 {
            step = step.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let name = names[(step >> 33) as usize % names.len()];
            if let Some(at) = members.iter().position(|m| m.node == name) {
                if members.len() > 1 {
                    members.remove(at);
                }
            } else {
                members.push(member(name, &SIX, &[]));
            }
            let moves = settle(&mut members);
            assert!(
                moves.values().all(|n| *n == 1),
                "an election moved twice: {moves:?}"
            );
            let cap = SIX.len().div_ceil(members.len());
            for member in &members {
                assert!(member.state.leading.len() <= cap, "{members:?}");
            }
            let led: usize = members.iter().map(|m| m.state.leading.len()).sum();
            assert_eq!(led, SIX.len());
        }
    }
}
