//! How a count is said in a message for the user: `1 file`, `2 files`, never `1 files` or
//! `file(s)`.

/// `n` and the noun that agrees with it: `one` for exactly 1, `many` otherwise (0 included).
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::count;

    #[test]
    fn the_noun_agrees_with_the_count() {
        for (n, want) in [(0, "0 entries"), (1, "1 entry"), (2, "2 entries")] {
            assert_eq!(count(n, "entry", "entries"), want);
        }
    }
}
