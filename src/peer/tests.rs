//! PeerConn behaviour against NetBird's rules.

use super::*;
use crate::crypto::PrivateKey;
use rand::SeedableRng;

fn keys() -> (PublicKey, PublicKey) {
    let a = PrivateKey::generate().public_key();
    let b = PrivateKey::generate().public_key();
    if is_controller(&a, &b) {
        (a, b)
    } else {
        (b, a)
    }
}

fn conn(local: PublicKey, remote: PublicKey, relay: Option<&str>, now: Instant) -> PeerConn {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (ufrag, pwd) = random_credentials(&mut rng);
    PeerConn::new(
        ConnConfig {
            local_key: local,
            remote_key: remote,
            wg_port: 51820,
            ufrag,
            pwd,
            force_relay: false,
        },
        relay.map(String::from),
        now,
        [1, 2, 3, 4, 5],
    )
}

fn offer(session: u8, relay: Option<&str>) -> OfferAnswer {
    OfferAnswer {
        ice: IceParams {
            ufrag: "remoteufragremote".into(),
            pwd: "remotepwdremotepwdremotepwdremot".into(),
            session_id: Some([session; 5]),
        },
        wg_listen_port: 51820,
        relay_address: relay.map(String::from),
    }
}

#[test]
fn controller_is_the_greater_base64_key() {
    let (hi, lo) = keys();
    assert!(is_controller(&hi, &lo));
    assert!(!is_controller(&lo, &hi));
}

#[test]
fn credentials_have_upstream_shape() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let (u, p) = random_credentials(&mut rng);
    assert_eq!((u.len(), p.len()), (16, 32));
    assert!(u.chars().chain(p.chars()).all(|c| c.is_ascii_alphabetic()));
}

#[test]
fn first_tick_offers_and_offer_is_always_answered() {
    let now = Instant::now();
    let (hi, lo) = keys();
    let mut c = conn(lo, hi, None, now);
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    c.handle_timeout(now, &mut rng);
    let e = c.poll_effects();
    assert!(
        matches!(&e[..], [Effect::SendOffer(o)] if o.ice.session_id == Some([1, 2, 3, 4, 5]) && o.ice.ufrag.len() == 16)
    );
    c.on_offer(offer(7, None), now);
    let e = c.poll_effects();
    assert!(matches!(e[0], Effect::SendAnswer(_)));
    assert!(matches!(
        &e[1],
        Effect::StartIce {
            controlling: false,
            ..
        }
    ));
}

#[test]
fn same_or_missing_session_id_is_ignored_new_one_restarts() {
    let now = Instant::now();
    let (hi, lo) = keys();
    let mut c = conn(hi, lo, None, now);
    c.on_answer(offer(7, None), now);
    assert!(matches!(
        &c.poll_effects()[..],
        [Effect::StartIce {
            controlling: true,
            ..
        }]
    ));
    let first_session = c.session_id();
    c.on_answer(offer(7, None), now);
    assert!(
        c.poll_effects().is_empty(),
        "a repeat of the same session must not restart ICE"
    );
    let mut no_id = offer(7, None);
    no_id.ice.session_id = None;
    c.on_answer(no_id, now);
    assert!(c.poll_effects().is_empty());
    c.on_answer(offer(8, None), now);
    let e = c.poll_effects();
    assert!(
        matches!(&e[..], [Effect::StopIce, Effect::StartIce { .. }]),
        "{e:?}"
    );
    assert_ne!(c.session_id(), first_session);
}

#[test]
fn empty_credentials_mean_relay_only() {
    let now = Instant::now();
    let (hi, lo) = keys();
    let mut c = conn(hi, lo, Some("rels://relay.local:443"), now);
    c.on_answer(offer(7, Some("rels://relay.local:443")), now);
    c.poll_effects();
    let mut relay_only = offer(7, Some("rels://relay.local:443"));
    relay_only.ice.ufrag.clear();
    relay_only.ice.pwd.clear();
    c.on_answer(relay_only, now);
    assert_eq!(c.poll_effects(), vec![Effect::StopIce]);
}

#[test]
fn relay_meets_on_the_controllers_home_relay() {
    let now = Instant::now();
    let (hi, lo) = keys();
    let mut controller = conn(hi, lo, Some("rel://home-a:80"), now);
    controller.on_answer(offer(1, Some("rel://home-b:80")), now);
    assert!(controller
        .poll_effects()
        .contains(&Effect::OpenRelay("rel://home-a:80".into())));
    let mut other = conn(lo, hi, Some("rel://home-b:80"), now);
    other.on_answer(offer(1, Some("rel://home-a:80")), now);
    assert!(other
        .poll_effects()
        .contains(&Effect::OpenRelay("rel://home-a:80".into())));
}

#[test]
fn ice_wins_over_relay_and_relay_takes_over_when_ice_drops() {
    let now = Instant::now();
    let (hi, lo) = keys();
    let mut c = conn(hi, lo, Some("rel://r:80"), now);
    c.on_answer(offer(1, Some("rel://r:80")), now);
    c.poll_effects();
    c.on_relay_connected(now);
    assert_eq!(
        c.poll_effects(),
        vec![Effect::SetPath(Some(ActivePath::Relay))]
    );
    assert_eq!(c.info().path, PathKind::Relay);
    let addr: SocketAddr = "10.0.0.2:51820".parse().unwrap();
    c.on_ice_connected(addr, false, now);
    assert_eq!(
        c.poll_effects(),
        vec![Effect::SetPath(Some(ActivePath::Direct(addr)))]
    );
    assert_eq!(c.info().path, PathKind::IceDirect);
    c.on_ice_lost(now);
    assert_eq!(
        c.poll_effects(),
        vec![Effect::SetPath(Some(ActivePath::Relay))]
    );
    c.on_relay_lost(now);
    assert_eq!(c.poll_effects(), vec![Effect::SetPath(None)]);
    assert_eq!(c.info().path, PathKind::None);
}

#[test]
fn fully_connected_peer_stops_offering_relay_only_offers_three_times() {
    let start = Instant::now();
    let (hi, lo) = keys();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut c = conn(hi, lo, Some("rel://r:80"), start);
    c.on_answer(offer(1, Some("rel://r:80")), start);
    c.on_relay_connected(start);
    c.poll_effects();
    let mut offers = 0;
    let mut now = start;
    for _ in 0..20 {
        now = c.poll_timeout().max(now);
        c.handle_timeout(now, &mut rng);
        offers += c
            .poll_effects()
            .iter()
            .filter(|e| matches!(e, Effect::SendOffer(_)))
            .count();
    }
    assert_eq!(offers, RELAY_ONLY_OFFER_LIMIT);
    c.on_ice_connected("10.0.0.2:1".parse().unwrap(), false, now);
    c.poll_effects();
    now = c.poll_timeout().max(now) + Duration::from_secs(3600);
    c.handle_timeout(now, &mut rng);
    assert!(c.poll_effects().is_empty());
}

#[test]
fn guard_backs_off_and_restarts_fast_after_events() {
    let start = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let mut g = guard::Guard::new(start);
    let mut now = start;
    let mut waits = Vec::new();
    for _ in 0..8 {
        g.schedule_next(now, &mut rng);
        waits.push(g.next_tick() - now);
        now = g.next_tick();
    }
    assert!(
        waits[0] >= Duration::from_millis(2700) && waits[0] <= Duration::from_millis(3300),
        "{waits:?}"
    );
    assert!(waits[1] > waits[0]);
    assert!(waits.iter().all(|w| *w <= Duration::from_secs(45)));
    g.restart_fast(now);
    assert_eq!(g.next_tick(), now, "an event re-offers at once");
    g.schedule_next(now, &mut rng);
    let wait = g.next_tick() - now;
    assert!(
        wait >= Duration::from_millis(720) && wait <= Duration::from_millis(880),
        "{wait:?}"
    );
}

#[test]
fn turn_is_gathered_only_without_a_relay_meeting_point() {
    let now = Instant::now();
    let (hi, lo) = keys();
    let gather = |home: Option<&str>, remote_relay: Option<&str>| {
        let mut c = conn(hi, lo, home, now);
        c.on_answer(offer(7, remote_relay), now);
        c.poll_effects().into_iter().find_map(|e| match e {
            Effect::StartIce { gather_turn, .. } => Some(gather_turn),
            _ => None,
        })
    };
    assert_eq!(gather(Some("rel://a"), Some("rel://b")), Some(false));
    assert_eq!(gather(None, Some("rel://b")), Some(true));
    assert_eq!(gather(Some("rel://a"), None), Some(true));
    assert_eq!(gather(None, None), Some(true));
}

#[test]
fn go_idle_closes_the_connection_and_stops_offers_until_woken() {
    let now = Instant::now();
    let (hi, lo) = keys();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut c = conn(hi, lo, Some("rel://home"), now);
    c.on_answer(offer(7, Some("rel://remote")), now);
    c.on_relay_connected(now);
    c.on_ice_connected("198.18.2.2:51820".parse().unwrap(), false, now);
    c.poll_effects();
    assert_eq!(c.info().path, PathKind::IceDirect);

    c.on_remote_idle(now);
    let e = c.poll_effects();
    assert!(e.contains(&Effect::StopIce), "{e:?}");
    assert!(e.contains(&Effect::CloseRelay), "{e:?}");
    assert!(e.contains(&Effect::SetPath(None)), "{e:?}");
    assert!(c.info().idle);
    assert_eq!(c.info().path, PathKind::None);
    // No offers while idle, however long it stays so.
    let mut t = now;
    for _ in 0..10 {
        t = c.poll_timeout().max(t) + Duration::from_secs(1);
        c.handle_timeout(t, &mut rng);
    }
    assert!(c.poll_effects().is_empty());

    // Local traffic wakes it: an offer goes out at once.
    c.on_local_activity(t);
    assert!(!c.info().idle);
    c.handle_timeout(t, &mut rng);
    assert!(matches!(&c.poll_effects()[..], [Effect::SendOffer(_)]));

    // Idle again; this time the remote's offer wakes it (answered, ICE restarted).
    c.on_remote_idle(t);
    c.poll_effects();
    c.on_offer(offer(8, Some("rel://remote")), t);
    assert!(!c.info().idle);
    let e = c.poll_effects();
    assert!(matches!(e[0], Effect::SendAnswer(_)), "{e:?}");
    assert!(
        e.iter().any(|x| matches!(x, Effect::StartIce { .. })),
        "{e:?}"
    );
}
