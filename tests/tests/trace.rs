//! `tcpstate trace` against the real kernel: each test runs its own
//! namespace and peers, and filters the global tracepoint on its own ports.

use std::collections::BTreeMap;

use tcpstate::model::{
    filter::{Filters, PortRange},
    state::{CloseSide, TcpState},
    transition::{Family, Transition},
};
use tcpstate_tests::*;

fn ports(p: &[u16]) -> Filters {
    Filters { ports: port_set(p), ..Default::default() }
}

/// Every transition of the life is attributed to `pid` with `comm`.
fn assert_owned_by(life: &[&Transition], pid: u32, comm: &str) {
    for t in life {
        let owner = t.owner.as_ref().unwrap_or_else(|| panic!("no owner on {t:?}"));
        assert_eq!((owner.pid, owner.comm.as_str()), (pid, comm), "{t:?}");
    }
}

fn final_close(life: &[&Transition]) -> Option<CloseSide> {
    life.last().and_then(|t| t.close)
}

/// One connection between a server and a client peer with the given close
/// modes; returns the events on the port and the two pids. Reruns when the
/// kernel skipped hits; with none skipped, no life may show a gap.
fn one_connection(
    test: &str,
    listen: &str,
    server_close: &str,
    client_close: &str,
) -> (Vec<Transition>, u32, u32) {
    let (events, server_pid, client_pid) = rerun_if_transitions_lost(test, || {
        let ns = Netns::new(test);
        let port = unique_port();
        let addr = listen.replace("PORT", &port.to_string());
        let mut tracer = start_tracer(ports(&[port]));
        let server = Peer::server(&ns, "tsp-server", &["server", "--listen", &addr, "--close", server_close]);
        let client =
            Peer::spawn(&ns, "tsp-client", false, &["client", "--connect", &addr, "--close", client_close]);
        let (server_pid, client_pid) = (server.pid(), client.pid());
        client.finish();
        server.finish();
        // Two connection sockets and the listener reach CLOSE.
        let got = collect(&mut tracer, |e| {
            closed_connections(e, 2)
                && e.iter().any(|t| t.old == TcpState::LISTEN && t.new == TcpState::CLOSE)
        });
        ((got.events, server_pid, client_pid), got.lost)
    });
    assert!(events.iter().all(|t| t.gap.is_none()), "a gap flagged but not counted: {events:#?}");
    (events, server_pid, client_pid)
}

#[test]
fn a_client_closes_first() {
    if !kernel_tests_possible("a_client_closes_first") {
        return;
    }
    let (events, server_pid, client_pid) = one_connection("a", "127.0.0.1:PORT", "second", "first");
    let lives = lives(&events);
    let client = life_starting(&lives, TcpState::CLOSE, TcpState::SYN_SENT);
    let server = life_starting(&lives, TcpState::LISTEN, TcpState::SYN_RECV);
    assert_eq!(states(client), ["CLOSE", "SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"]);
    assert_eq!(states(server), ["LISTEN", "SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]);
    assert_owned_by(client, client_pid, "tsp-client");
    assert_owned_by(server, server_pid, "tsp-server");
    assert_eq!(final_close(client), Some(CloseSide::Active));
    assert_eq!(final_close(server), Some(CloseSide::Passive));
    // Durations: known for every step after the first; the first is the
    // time in CLOSE or LISTEN, which is not this socket's.
    for life in [client, server] {
        assert_eq!(life[0].in_old_state_ns, None);
        assert!(life[1..].iter().all(|t| t.in_old_state_ns.is_some()), "{life:?}");
        assert!(life[0].seen_from_start);
    }
    // The listener's own life.
    let listener = life_starting(&lives, TcpState::CLOSE, TcpState::LISTEN);
    assert_eq!(states(listener), ["CLOSE", "LISTEN", "CLOSE"]);
    assert_owned_by(listener, server_pid, "tsp-server");
}

#[test]
fn b_server_closes_first_is_attributed_to_the_server() {
    if !kernel_tests_possible("b_server_closes_first") {
        return;
    }
    let (events, server_pid, client_pid) = one_connection("b", "127.0.0.1:PORT", "first", "second");
    let lives = lives(&events);
    let client = life_starting(&lives, TcpState::CLOSE, TcpState::SYN_SENT);
    let server = life_starting(&lives, TcpState::LISTEN, TcpState::SYN_RECV);
    assert_eq!(states(server), ["LISTEN", "SYN_RECV", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"]);
    assert_eq!(states(client), ["CLOSE", "SYN_SENT", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]);
    // The active close, and so the TIME_WAIT, belongs to the server. On
    // loopback the client's ESTABLISHED→CLOSE_WAIT runs in the server's
    // context, which is what misleads tools that print `current`.
    assert_owned_by(server, server_pid, "tsp-server");
    assert_owned_by(client, client_pid, "tsp-client");
    let fin = server.iter().find(|t| t.new == TcpState::FIN_WAIT1).unwrap();
    assert!(!fin.owner.as_ref().unwrap().from_listener, "FIN_WAIT1 runs in the closer's own context");
    assert_eq!(final_close(server), Some(CloseSide::Active));
    assert_eq!(final_close(client), Some(CloseSide::Passive));
}

#[test]
fn c_simultaneous_close() {
    if !kernel_tests_possible("c_simultaneous_close") {
        return;
    }
    let (events, server_pid, client_pid) =
        one_connection("c", "127.0.0.1:PORT", "simultaneous", "simultaneous");
    let lives = lives(&events);
    let client = life_starting(&lives, TcpState::CLOSE, TcpState::SYN_SENT);
    let server = life_starting(&lives, TcpState::LISTEN, TcpState::SYN_RECV);
    for (life, pid, comm) in [(client, client_pid, "tsp-client"), (server, server_pid, "tsp-server")] {
        assert_owned_by(life, pid, comm);
        assert!(
            life.iter().any(|t| t.old == TcpState::ESTABLISHED && t.new == TcpState::FIN_WAIT1),
            "{life:?}"
        );
        // Whichever FIN arrives first finds its receiver in FIN_WAIT1.
        assert!(matches!(final_close(life), Some(CloseSide::Simultaneous | CloseSide::Active)), "{life:?}");
    }
    let closing: Vec<_> = [client, server]
        .into_iter()
        .filter(|l| l.iter().any(|t| t.old == TcpState::FIN_WAIT1 && t.new == TcpState::CLOSING))
        .collect();
    assert!(!closing.is_empty(), "no side went FIN_WAIT1 -> CLOSING: {lives:#?}");
    for life in closing {
        assert_eq!(final_close(life), Some(CloseSide::Simultaneous));
        assert_eq!(life.last().unwrap().old, TcpState::CLOSING);
    }
}

#[test]
fn d_abortive_close_is_a_reset_on_both_sides() {
    if !kernel_tests_possible("d_abortive_close") {
        return;
    }
    let (events, server_pid, client_pid) = one_connection("d", "127.0.0.1:PORT", "second", "abort");
    let lives = lives(&events);
    let client = life_starting(&lives, TcpState::CLOSE, TcpState::SYN_SENT);
    let server = life_starting(&lives, TcpState::LISTEN, TcpState::SYN_RECV);
    assert_eq!(states(client), ["CLOSE", "SYN_SENT", "ESTABLISHED", "CLOSE"]);
    assert_eq!(states(server), ["LISTEN", "SYN_RECV", "ESTABLISHED", "CLOSE"]);
    assert_eq!(final_close(client), Some(CloseSide::Reset));
    assert_eq!(final_close(server), Some(CloseSide::Reset));
    assert_owned_by(client, client_pid, "tsp-client");
    assert_owned_by(server, server_pid, "tsp-server");
}

#[test]
fn e_ipv6_loopback() {
    if !kernel_tests_possible("e_ipv6_loopback") {
        return;
    }
    let (events, server_pid, client_pid) = one_connection("e", "[::1]:PORT", "second", "first");
    assert!(events.iter().all(|t| t.family == Family::Ipv6), "{events:#?}");
    let lives = lives(&events);
    let client = life_starting(&lives, TcpState::CLOSE, TcpState::SYN_SENT);
    let server = life_starting(&lives, TcpState::LISTEN, TcpState::SYN_RECV);
    assert_eq!(states(client), ["CLOSE", "SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"]);
    for t in client[1..].iter().chain(&server[1..]) {
        assert_eq!((t.tuple.saddr.to_string(), t.tuple.daddr.to_string()), ("::1".into(), "::1".into()));
    }
    // Older kernels (6.1) record the child's LISTEN -> SYN_RECV before they
    // copy the peer's IPv6 address into it: `::` then.
    let first = server[0];
    assert_eq!(first.tuple.saddr.to_string(), "::1");
    assert!(["::1", "::"].contains(&first.tuple.daddr.to_string().as_str()), "{first:?}");
    assert_owned_by(client, client_pid, "tsp-client");
    assert_owned_by(server, server_pid, "tsp-server");
    assert_eq!(final_close(client), Some(CloseSide::Active));
}

/// Port and family filters, each tracer seeing the same traffic.
#[test]
fn f_port_and_family_filters() {
    if !kernel_tests_possible("f_port_and_family_filters") {
        return;
    }
    // Each tracer's events, in the order started below.
    let (got, p4, p6) = rerun_if_transitions_lost("f_port_and_family_filters", || {
        let ns = Netns::new("fport");
        let (p4, p6) = (unique_port(), unique_port());
        let a4 = format!("127.0.0.1:{p4}");
        let a6 = format!("[::1]:{p6}");
        let both = port_set(&[p4, p6]);
        let range = PortRange { first: p4.min(p6), last: p4.max(p6) };
        let mut tracers = [
            start_tracer(ports(&[p4])),
            start_tracer(Filters { lports: port_set(&[p4]), ..Default::default() }),
            start_tracer(Filters { rports: port_set(&[p4]), ..Default::default() }),
            start_tracer(Filters { family: Some(Family::Ipv6), ports: both.clone(), ..Default::default() }),
            start_tracer(Filters { family: Some(Family::Ipv4), ports: both.clone(), ..Default::default() }),
            start_tracer(Filters { ports: vec![range], ..Default::default() }),
        ];
        for addr in [&a4, &a6] {
            let server = Peer::server(&ns, "tsp-fsrv", &["server", "--listen", addr, "--close", "second"]);
            Peer::spawn(&ns, "tsp-fcli", false, &["client", "--connect", addr, "--close", "first"]).finish();
            server.finish();
        }
        // Closed connections each tracer must see: both ports, or one.
        let wanted = [2, 1, 1, 2, 2, 2];
        let got: Vec<Collected> =
            tracers.iter_mut().zip(wanted).map(|(t, n)| collect(t, |e| closed_connections(e, n))).collect();
        let lost = got.iter().map(|c| c.lost).fold(Lost::default(), Lost::max);
        ((got.into_iter().map(|c| c.events).collect::<Vec<_>>(), p4, p6), lost)
    });
    let [port, lport, rport, v6, v4, range] = <[Vec<Transition>; 6]>::try_from(got).unwrap();
    // A range holding both ports selects both connections, and nothing else.
    assert!(closed_connections(&range, 2));
    let in_range = |p: u16| (p4.min(p6)..=p4.max(p6)).contains(&p);
    assert!(range.iter().all(|t| in_range(t.tuple.sport) || in_range(t.tuple.dport)), "{range:#?}");
    assert!(closed_connections(&port, 2));
    assert!(port.iter().all(|t| t.tuple.sport == p4 || t.tuple.dport == p4), "{port:#?}");

    assert!(closed_connections(&lport, 1));
    assert!(lport.iter().all(|t| t.tuple.sport == p4), "{lport:#?}");
    assert!(closed_connections(&rport, 1));
    assert!(rport.iter().all(|t| t.tuple.dport == p4), "{rport:#?}");

    assert!(closed_connections(&v6, 2));
    assert!(
        v6.iter().all(|t| t.family == Family::Ipv6 && (t.tuple.sport == p6 || t.tuple.dport == p6)),
        "{v6:#?}"
    );
    assert!(closed_connections(&v4, 2));
    assert!(
        v4.iter().all(|t| t.family == Family::Ipv4 && (t.tuple.sport == p4 || t.tuple.dport == p4)),
        "{v4:#?}"
    );
}

/// Owner filters select on the attributed owner, so they see the whole life
/// of the owner's sockets, including the softirq transitions.
#[test]
fn f_pid_and_comm_filters() {
    if !kernel_tests_possible("f_pid_and_comm_filters") {
        return;
    }
    let ((pid_events, comm_events), server_pid, client_pid) =
        rerun_if_transitions_lost("f_pid_and_comm", || {
            let ns = Netns::new("fowner");
            let port = unique_port();
            let addr = format!("127.0.0.1:{port}");
            let mut client =
                Peer::spawn(&ns, "tsp-pcli", true, &["client", "--connect", &addr, "--close", "first"]);
            let client_pid = client.pid();
            let mut by_pid = start_tracer(Filters { pids: vec![client_pid], ..Default::default() });
            let mut by_comm = start_tracer(Filters { comms: vec!["tsp-psrv".into()], ..Default::default() });
            let server = Peer::server(&ns, "tsp-psrv", &["server", "--listen", &addr, "--close", "second"]);
            let server_pid = server.pid();
            client.go();
            client.finish();
            server.finish();
            let pid = collect(&mut by_pid, |e| closed_connections(e, 1));
            let comm = collect(&mut by_comm, |e| {
                closed_connections(e, 1)
                    && e.iter().any(|t| t.old == TcpState::LISTEN && t.new == TcpState::CLOSE)
            });
            let lost = pid.lost.max(comm.lost);
            (((pid.events, comm.events), server_pid, client_pid), lost)
        });

    let lives_by_pid = lives(&pid_events);
    assert_eq!(lives_by_pid.len(), 1, "{pid_events:#?}");
    assert_eq!(
        states(&lives_by_pid[0]),
        ["CLOSE", "SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"]
    );
    assert_owned_by(&lives_by_pid[0], client_pid, "tsp-pcli");

    let lives_by_comm = lives(&comm_events);
    let child = life_starting(&lives_by_comm, TcpState::LISTEN, TcpState::SYN_RECV);
    assert_eq!(states(child), ["LISTEN", "SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]);
    assert_eq!(lives_by_comm.len(), 2, "the child and the listener only: {comm_events:#?}");
    for t in &comm_events {
        let owner = t.owner.as_ref().unwrap();
        assert_eq!((owner.pid, owner.comm.as_str()), (server_pid, "tsp-psrv"));
    }
}

/// With nothing dropped, the kernel's per-pair counters equal the events.
#[test]
fn g_kernel_counters_match_events() {
    if !kernel_tests_possible("g_kernel_counters_match_events") {
        return;
    }
    const CONNECTIONS: usize = 25;
    let (events, counters) = rerun_if_transitions_lost("g_kernel_counters_match_events", || {
        let ns = Netns::new("g");
        let port = unique_port();
        let addr = format!("127.0.0.1:{port}");
        let mut tracer = start_tracer(ports(&[port]));
        let n = CONNECTIONS.to_string();
        let server =
            Peer::server(&ns, "tsp-gsrv", &["server", "--listen", &addr, "--count", &n, "--close", "second"]);
        Peer::spawn(
            &ns,
            "tsp-gcli",
            false,
            &["client", "--connect", &addr, "--count", &n, "--close", "first"],
        )
        .finish();
        server.finish();
        let got = collect(&mut tracer, |e| {
            closed_connections(e, 2 * CONNECTIONS)
                && e.iter().any(|t| t.new == TcpState::CLOSE && t.old == TcpState::LISTEN)
        });
        let counters = tracer.counters().unwrap();
        ((got.events, counters), got.lost)
    });
    assert_eq!(counters.ringbuf_full, 0);
    assert_eq!(counters.read_failed, 0);
    assert_eq!(counters.socket_insert_failed, 0);
    assert_eq!(counters.received, events.len() as u64);
    let mut from_events: BTreeMap<(TcpState, TcpState), u64> = BTreeMap::new();
    for t in &events {
        *from_events.entry((t.old, t.new)).or_default() += 1;
    }
    assert_eq!(counters.transitions, from_events);
    // 25 × (client 5 + server 5) + listener 2.
    assert_eq!(counters.total_transitions(), (CONNECTIONS * 10 + 2) as u64);
    assert_eq!(from_events[&(TcpState::ESTABLISHED, TcpState::FIN_WAIT1)], CONNECTIONS as u64);
    assert_eq!(counters.recursion_misses, Some(0));
    assert_eq!(counters.sockets_with_gaps, 0);
}

/// A socket table that disagrees with the kernel, as after a skipped hit:
/// the next transition is flagged, with the state the table last saw and no
/// time in the old state, and the socket is counted once.
#[test]
fn h_missed_transition_is_flagged() {
    if !kernel_tests_possible("h_missed_transition") {
        return;
    }
    let (events, counters) = rerun_if_transitions_lost("h_missed_transition", || {
        let ns = Netns::new("h");
        let port = unique_port();
        let addr = format!("127.0.0.1:{port}");
        let mut tracer = start_tracer(ports(&[port]));
        let server = Peer::server(&ns, "tsp-hsrv", &["server", "--listen", &addr, "--close", "second"]);
        // It closes once the test has edited the table.
        let mut client = Peer::spawn(
            &ns,
            "tsp-hcli",
            false,
            &["client", "--connect", &addr, "--close", "first", "--close-on-go"],
        );
        let connected = collect(&mut tracer, |e| {
            e.iter().any(|t| t.old == TcpState::SYN_SENT && t.new == TcpState::ESTABLISHED)
        });
        let mut events = connected.events;
        let established = events.iter().find(|t| t.old == TcpState::SYN_SENT).map(|t| t.skaddr);
        if let Some(skaddr) = established {
            // As if SYN_SENT -> ESTABLISHED had been skipped.
            tracer.forget_transition(skaddr, TcpState::SYN_SENT).expect("edit the socket table");
        }
        client.go();
        client.finish();
        server.finish();
        let rest = collect(&mut tracer, |e| {
            closed_connections(e, 2)
                && e.iter().any(|t| t.old == TcpState::LISTEN && t.new == TcpState::CLOSE)
        });
        events.extend(rest.events);
        // Lost beyond the one gap this test made.
        let lost = Lost { sockets_with_gaps: rest.lost.sockets_with_gaps.saturating_sub(1), ..rest.lost };
        ((events, tracer.counters().unwrap()), lost)
    });
    let lives = lives(&events);
    let client = life_starting(&lives, TcpState::CLOSE, TcpState::SYN_SENT);
    assert_eq!(states(client), ["CLOSE", "SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"]);
    let flagged: Vec<_> = events.iter().filter(|t| t.gap.is_some()).collect();
    assert_eq!(flagged.len(), 1, "{events:#?}");
    let fin = flagged[0];
    assert_eq!((fin.old, fin.new), (TcpState::ESTABLISHED, TcpState::FIN_WAIT1));
    assert_eq!(fin.gap, Some(TcpState::SYN_SENT));
    assert_eq!(fin.in_old_state_ns, None, "the time in ESTABLISHED is not known");
    // The rest of the life is whole again: its later times are known.
    assert!(client[4..].iter().all(|t| t.gap.is_none() && t.in_old_state_ns.is_some()), "{client:#?}");
    assert_eq!(final_close(client), Some(CloseSide::Active));
    assert_eq!(counters.sockets_with_gaps, 1);
}

/// A server and a connection that were there before the tracer started:
/// the scan at start gives the connection and the listener their owner,
/// so a kernel-side `--pid` filter on the server sees the old connection's
/// close and a new connection's whole life, accept included.
#[test]
fn i_owners_of_sockets_from_before_the_start() {
    let test = "i_owners_at_start";
    let (events, server_pid) = rerun_if_transitions_lost(test, || {
        let ns = Netns::new("i_early");
        let port = unique_port();
        let addr = format!("127.0.0.1:{port}");
        let server = Peer::server(
            &ns,
            "tsp-early",
            &["server", "--listen", &addr, "--count", "2", "--close", "second"],
        );
        let mut early = Peer::spawn(
            &ns,
            "tsp-early-cli",
            false,
            &["client", "--connect", &addr, "--close", "first", "--close-on-go"],
        );
        let established = wait_until(scaled(EVENT_WAIT), || {
            let out = ns.exec(&["ss", "-tnH", "state", "established"]);
            String::from_utf8_lossy(&out.stdout).lines().count() == 2
        });
        assert!(established, "the early connection is not established");
        let server_pid = server.pid();
        let filters = Filters { pids: vec![server_pid], ports: port_set(&[port]), ..Default::default() };
        let mut tracer = start_tracer(filters);
        early.go();
        early.finish();
        let late =
            Peer::spawn(&ns, "tsp-late-cli", false, &["client", "--connect", &addr, "--close", "first"]);
        late.finish();
        server.finish();
        let got = collect(&mut tracer, |e| {
            closed_connections(e, 2)
                && e.iter().any(|t| t.old == TcpState::LISTEN && t.new == TcpState::CLOSE)
        });
        ((got.events, server_pid), got.lost)
    });
    let lives = lives(&events);
    assert_eq!(lives.len(), 3, "the two server-side connections and the listener: {lives:#?}");
    for life in &lives {
        assert_owned_by(life, server_pid, "tsp-early");
    }
    // The early connection, first seen when its client closed.
    let early = life_starting(&lives, TcpState::ESTABLISHED, TcpState::CLOSE_WAIT);
    assert_eq!(states(early), ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]);
    assert!(early[0].owner.unwrap().at_start, "{:?}", early[0]);
    assert!(!early[1].owner.unwrap().at_start, "its close names the owner itself: {:?}", early[1]);
    // The late connection, accepted from the early listener.
    let late = life_starting(&lives, TcpState::LISTEN, TcpState::SYN_RECV);
    assert_eq!(states(late), ["LISTEN", "SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]);
    let lent = late[0].owner.unwrap();
    assert!(lent.from_listener && lent.at_start, "{:?}", late[0]);
    let own = late[3].owner.unwrap();
    assert!(!own.from_listener && !own.at_start, "its close names the owner itself: {:?}", late[3]);
}

/// Two listeners on one port in two namespaces each lend their own owner
/// to the connections they accept, whichever listened last.
#[test]
fn i_listeners_are_told_apart_by_namespace() {
    let test = "i_listener_namespaces";
    let (events, servers) = rerun_if_transitions_lost(test, || {
        let (red_ns, blue_ns) = (Netns::new("i_red"), Netns::new("i_blue"));
        let port = unique_port();
        let addr = format!("127.0.0.1:{port}");
        let mut tracer = start_tracer(ports(&[port]));
        let args = ["server", "--listen", &addr, "--close", "second"];
        let red = Peer::server(&red_ns, "tsp-red", &args);
        let blue = Peer::server(&blue_ns, "tsp-blue", &args);
        // Namespace inode → the pid of the server listening in it.
        let servers: BTreeMap<u32, u32> = [(&red_ns, red.pid()), (&blue_ns, blue.pid())]
            .into_iter()
            .map(|(ns, pid)| (ns.inode(), pid))
            .collect();
        for ns in [&red_ns, &blue_ns] {
            Peer::spawn(ns, "tsp-cli", false, &["client", "--connect", &addr, "--close", "first"]).finish();
        }
        red.finish();
        blue.finish();
        let got = collect(&mut tracer, |e| closed_connections(e, 4));
        ((got.events, servers), got.lost)
    });
    assert_eq!(servers.len(), 2);
    let lives = lives(&events);
    let accepted: Vec<_> = lives
        .iter()
        .filter_map(|l| l.first().filter(|t| t.old == TcpState::LISTEN && t.new == TcpState::SYN_RECV))
        .collect();
    assert_eq!(accepted.len(), 2, "{events:#?}");
    for t in accepted {
        assert_eq!(t.owner.map(|o| o.pid), servers.get(&t.netns).copied(), "{t:?} (servers: {servers:?})");
    }
}

/// `--netns` selects sockets by namespace, in the kernel: the same port in
/// another namespace stays out.
#[test]
fn j_netns_filter() {
    let test = "j_netns_filter";
    let (events, red_inode) = rerun_if_transitions_lost(test, || {
        let (red_ns, blue_ns) = (Netns::new("j_red"), Netns::new("j_blue"));
        let port = unique_port();
        let addr = format!("127.0.0.1:{port}");
        let filters =
            Filters { ports: port_set(&[port]), namespaces: vec![red_ns.inode()], ..Default::default() };
        let mut tracer = start_tracer(filters);
        for ns in [&blue_ns, &red_ns] {
            let server = Peer::server(ns, "tsp-j-srv", &["server", "--listen", &addr, "--close", "second"]);
            Peer::spawn(ns, "tsp-j-cli", false, &["client", "--connect", &addr, "--close", "first"]).finish();
            server.finish();
        }
        // The blue connection closed first: once red's two have closed,
        // blue's would have been drained already.
        let got = collect(&mut tracer, |e| closed_connections(e, 2));
        ((got.events, red_ns.inode()), got.lost)
    });
    assert!(closed_connections(&events, 2), "{events:#?}");
    assert!(events.iter().all(|t| t.netns == red_inode), "only the red namespace: {events:#?}");
    assert_eq!(lives(&events).len(), 3, "red's two sockets and its listener: {events:#?}");
}
