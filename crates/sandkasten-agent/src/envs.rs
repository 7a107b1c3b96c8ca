//! Environments as ordered `(name, value)` lists, set over one another in
//! time linear in their sizes (a request may carry tens of thousands of
//! variables; setting each by a scan of the list was quadratic).

use std::collections::HashMap;

/// Sets each of `over` in `env`: a name already there takes the new value
/// in its place, a new one is appended.
pub fn set_all(env: &mut Vec<(String, String)>, over: impl IntoIterator<Item = (String, String)>) {
    let mut at: HashMap<String, usize> = env
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    for (k, v) in over {
        match at.get(&k) {
            Some(&i) => env[i].1 = v,
            None => {
                at.insert(k.clone(), env.len());
                env.push((k, v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn later_values_win_and_names_stay_unique() {
        let mut env = pairs(&[("A", "1"), ("B", "2")]);
        set_all(
            &mut env,
            pairs(&[("B", "3"), ("C", "4"), ("C", "5"), ("A", "6")]),
        );
        assert_eq!(env, pairs(&[("A", "6"), ("B", "3"), ("C", "5")]));
    }

    #[test]
    fn a_hundred_thousand_variables_take_no_time() {
        let mut env = pairs(&[("PATH", "/bin")]);
        let many: Vec<(String, String)> = (0..100_000)
            .map(|i| (format!("V{i}"), i.to_string()))
            .collect();
        let t = std::time::Instant::now();
        set_all(&mut env, many.clone());
        set_all(&mut env, many);
        assert_eq!(env.len(), 100_001);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t.elapsed()
        );
    }
}
