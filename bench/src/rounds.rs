//! The order of the systems in each round of a benchmark.

/// The systems in the order round `round` runs them: each round starts one
/// system later, so that over as many rounds as systems each runs once in
/// every position: with one order for every round, a system's place in
/// the round moved its figures as much as the differences being measured.
pub fn round_order<T>(systems: &[T], round: usize) -> impl Iterator<Item = &T> {
    let start = round % systems.len().max(1);
    systems[start..].iter().chain(&systems[..start])
}
