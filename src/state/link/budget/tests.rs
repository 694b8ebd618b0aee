use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// 10 normal tokens a second, capacity 10: one per 100.5 ms in the model
/// (0.5 % slower than the hub).
fn limits() -> RateLimits {
    RateLimits { light: 20, normal: 10, heavy: 2, window: ms(1_000) }
}

#[test]
fn tiers_follow_the_hub_config() {
    for (kind, tier) in [
        (OutKind::Ping, Tier::Light),
        (OutKind::Identify, Tier::Heavy),
        (OutKind::TaskAccepted, Tier::Normal),
        (OutKind::TaskComplete, Tier::Normal),
        (OutKind::TaskFailed, Tier::Normal),
        (OutKind::TaskProgress, Tier::Normal),
        (OutKind::TaskRecovering, Tier::Normal),
        (OutKind::WakeResult, Tier::Normal),
        (OutKind::StateReport, Tier::Normal),
    ] {
        assert_eq!(Tier::of(kind), tier, "{kind}");
    }
    for tier in Tier::ALL {
        assert_eq!(Tier::parse(tier.name()), Some(tier));
    }
    assert_eq!(Tier::parse("mega"), None);
}

#[test]
fn the_hubs_backoff_steps_scale_with_the_window() {
    let hub = RateLimits::default();
    let steps: Vec<u64> = (1..=7).map(|n| hub.denial_backoff(n).as_millis() as u64).collect();
    assert_eq!(steps, [1_000, 2_000, 5_000, 10_000, 30_000, 30_000, 30_000]);
    assert_eq!(limits().denial_backoff(3), Duration::from_nanos(83_333_333));
    assert_eq!(RateLimits { window: ms(6_000), ..hub }.denial_backoff(5), ms(3_000));
}

/// One step of a scenario: at `t` ms, do something; then the model's tokens
/// of the normal tier and whether a normal frame may go.
enum Step {
    Spend,
    Warning(u64, u64),
    Denied(u64),
}

#[test]
fn the_model_spends_refills_and_follows_the_hub() {
    use Step::*;
    // (at ms, action, normal tokens after, may a normal frame go)
    let table: &[(u64, Option<Step>, i128, bool)] = &[
        (0, None, 10, true),
        (0, Some(Spend), 9, true),
        // Ten frames at once: the bucket is empty, the next waits.
        (0, Some(Spend), 8, true),
        (0, Some(Spend), 7, true),
        (0, Some(Spend), 6, true),
        (0, Some(Spend), 5, true),
        (0, Some(Spend), 4, true),
        (0, Some(Spend), 3, true),
        (0, Some(Spend), 2, true),
        (0, Some(Spend), 1, true),
        (0, Some(Spend), 0, false),
        // A token every 100.5 ms.
        (100, None, 0, false),
        (101, None, 1, true),
        (101, Some(Spend), 0, false),
        (2_000, None, 10, true),
        // The hub knows better: only 3 left.
        (2_000, Some(Warning(3, 10)), 3, true),
        // A warning with more than we think changes nothing.
        (2_000, Some(Warning(7, 10)), 3, true),
        // A denial empties the tier and blocks it for the hub's wait.
        (2_000, Some(Denied(1_000)), 0, false),
        (2_500, None, 4, false),
        (3_000, None, 9, true),
        // A second denial within the window: the hub's 2nd step (2 s of 60,
        // scaled: 33 ms) is shorter than the retry_after given.
        (3_000, Some(Denied(400)), 0, false),
        (3_400, None, 3, true),
    ];
    let t0 = Instant::now();
    let mut budget = Budget::new(limits(), t0);
    for (i, (at, step, tokens, can)) in table.iter().enumerate() {
        let now = t0 + ms(*at);
        match step {
            Some(Spend) => budget.spend(Tier::Normal, now),
            Some(Warning(remaining, capacity)) => {
                budget.on_warning(Tier::Normal, Some(*remaining), Some(*capacity), now)
            }
            Some(Denied(retry)) => {
                budget.on_denied(Tier::Normal, ms(*retry), now);
            }
            None => {}
        }
        assert_eq!(budget.tokens(Tier::Normal, now), *tokens, "row {i} at {at} ms");
        assert_eq!(budget.can_send(Tier::Normal, now), *can, "row {i} at {at} ms");
    }
    // The other tiers were untouched.
    assert_eq!(budget.tokens(Tier::Light, t0 + ms(3_400)), 20);
}

#[test]
fn the_next_send_time_is_the_next_token_or_the_end_of_a_denial() {
    let t0 = Instant::now();
    let mut budget = Budget::new(limits(), t0);
    for _ in 0..10 {
        budget.spend(Tier::Normal, t0);
    }
    let token = Duration::from_micros(100_500);
    assert_eq!(budget.ready_at(Tier::Normal), t0 + token);
    // Sent anyway (before the sidecar knew the hub rate-limits): the hub
    // denied it, its bucket stays empty, and so does the model.
    budget.spend(Tier::Normal, t0);
    assert_eq!(budget.tokens(Tier::Normal, t0), 0);
    assert_eq!(budget.ready_at(Tier::Normal), t0 + token);
    let (wait, count) = budget.on_denied(Tier::Normal, ms(1_000), t0 + ms(10));
    assert_eq!((wait, count), (ms(1_000), 1));
    assert_eq!(budget.ready_at(Tier::Normal), t0 + ms(1_010));
    assert_eq!(budget.ready_at(Tier::Light), t0, "light is full");
}

#[test]
fn repeated_denials_back_off_as_the_hub_does_and_reset_after_a_window() {
    // The hub's own window, and a hub that says 1 s every time.
    let t0 = Instant::now();
    let mut budget = Budget::new(RateLimits::default(), t0);
    let secs = Duration::from_secs;
    let mut at = t0;
    let mut waits = Vec::new();
    for _ in 0..6 {
        let (wait, _) = budget.on_denied(Tier::Normal, secs(1), at);
        waits.push(wait.as_secs());
        at += ms(100);
    }
    assert_eq!(waits, [1, 2, 5, 10, 30, 30]);
    // More than a window after the denial that started the count: 1 again.
    let (wait, count) = budget.on_denied(Tier::Normal, secs(1), t0 + secs(61));
    assert_eq!((wait, count), (secs(1), 1));
    // The hub's retry_after wins when longer.
    let (wait, count) = budget.on_denied(Tier::Normal, secs(7), t0 + secs(62));
    assert_eq!((wait, count), (secs(7), 2));
}

#[test]
fn a_smaller_capacity_from_the_hub_caps_the_model() {
    let t0 = Instant::now();
    let mut budget = Budget::new(limits(), t0);
    budget.on_warning(Tier::Normal, None, Some(4), t0);
    assert_eq!(budget.tokens(Tier::Normal, t0), 4);
    budget.on_warning(Tier::Normal, None, Some(0), t0);
    budget.on_warning(Tier::Normal, None, Some(40), t0);
    assert_eq!(budget.tokens(Tier::Normal, t0 + ms(10_000)), 4);
}
