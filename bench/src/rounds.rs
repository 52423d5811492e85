//! The order of the systems in each round of a benchmark.

/// The systems in the order round `round` runs them: each round starts one
/// system later, so that over as many rounds as systems each runs once in
/// every position: with one order for every round, a system's place in
/// the round moved its figures as much as the differences being measured.
pub fn round_order<T>(systems: &[T], round: usize) -> impl Iterator<Item = &T> {
    let start = round % systems.len().max(1);
    systems[start..].iter().chain(&systems[..start])
}

#[cfg(test)]
mod tests {
    use super::round_order;

    #[test]
    fn over_as_many_rounds_as_systems_each_runs_once_in_every_position() {
        let systems = ["a", "b", "c"];
        let orders: Vec<Vec<&str>> = (0..3)
            .map(|round| round_order(&systems, round).copied().collect())
            .collect();
        assert_eq!(orders[0], ["a", "b", "c"]);
        for position in 0..3 {
            let mut seen: Vec<&str> = orders.iter().map(|order| order[position]).collect();
            seen.sort_unstable();
            assert_eq!(seen, systems, "position {position}");
        }
        assert_eq!(round_order(&systems, 3).count(), 3);
        assert_eq!(round_order::<&str>(&[], 1).count(), 0);
    }
}
