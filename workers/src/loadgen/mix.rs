//! The order mix: which kinds of `order.submitted` loadgen sends, and how
//! many of each.

use std::fmt;
use std::str::FromStr;

/// A kind of submitted order, each with one expected end of its saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Category {
    /// Known SKUs, within credit and limits: `order.confirmed`.
    Valid,
    /// One SKU not in the inventory: `order.cancelled(unknown_sku)`.
    UnknownSku,
    /// A total above the customer's credit: `order.cancelled(payment_declined)`.
    OverCredit,
    /// Well-formed but breaking a business rule: `order.rejected`.
    Invalid,
}

impl Category {
    pub(crate) const ALL: [Category; 4] = [
        Category::Valid,
        Category::UnknownSku,
        Category::OverCredit,
        Category::Invalid,
    ];

    /// The name used in `--mix`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Category::Valid => "valid",
            Category::UnknownSku => "unknown_sku",
            Category::OverCredit => "over_credit",
            Category::Invalid => "invalid",
        }
    }

    /// Position in [`Category::ALL`].
    pub(crate) fn index(self) -> usize {
        match self {
            Category::Valid => 0,
            Category::UnknownSku => 1,
            Category::OverCredit => 2,
            Category::Invalid => 3,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Category {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|category| category.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown category `{s}` (expected {})",
                    Category::ALL.map(Category::as_str).join(", ")
                )
            })
    }
}

/// The default of `--mix`.
pub(crate) const DEFAULT_MIX: &str = "valid=70,unknown_sku=10,over_credit=10,invalid=10";

/// Relative weights of the categories (percentages or any other weights).
/// Categories left out of `--mix` weigh 0.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Mix {
    weights: [f64; 4],
}

impl Mix {
    #[cfg(test)]
    pub(crate) fn weight(&self, category: Category) -> f64 {
        self.weights[category.index()]
    }

    /// How many of `orders` orders fall in each category, proportional to the
    /// weights (largest remainder, ties to the earlier category), summing to
    /// exactly `orders`.
    pub(crate) fn counts(&self, orders: u64) -> Counts {
        let total: f64 = self.weights.iter().sum();
        let mut counts = [0_u64; 4];
        let mut fractions = [0_f64; 4];
        for (index, weight) in self.weights.iter().enumerate() {
            let exact = orders as f64 * weight / total;
            counts[index] = (exact.floor() as u64).min(orders);
            fractions[index] = exact - exact.floor();
        }
        // Floating point could overshoot by a unit at a boundary: take it
        // back from the largest count.
        while counts.iter().sum::<u64>() > orders {
            let largest = (0..4).max_by_key(|&i| counts[i]).unwrap_or(0);
            counts[largest] -= 1;
        }
        let mut ranked: Vec<usize> = (0..4).filter(|&i| self.weights[i] > 0.0).collect();
        ranked.sort_by(|&a, &b| fractions[b].total_cmp(&fractions[a]).then(a.cmp(&b)));
        let mut missing = orders - counts.iter().sum::<u64>();
        for &index in ranked.iter().cycle() {
            if missing == 0 {
                break;
            }
            counts[index] += 1;
            missing -= 1;
        }
        Counts(counts)
    }
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            weights: [70.0, 10.0, 10.0, 10.0],
        }
    }
}

impl FromStr for Mix {
    type Err = String;

    /// `category=weight` pairs separated by commas, e.g.
    /// `valid=70,unknown_sku=10,over_credit=10,invalid=10`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut weights: [Option<f64>; 4] = [None; 4];
        for entry in s.split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(format!(
                    "empty entry in `{s}`: expected category=weight pairs separated by commas"
                ));
            }
            let (name, value) = entry.split_once('=').ok_or_else(|| {
                format!("`{entry}` is not category=weight (for example valid=70)")
            })?;
            let name = name.trim();
            let category: Category = name.parse()?;
            let value = value.trim();
            let weight = value
                .parse::<f64>()
                .ok()
                .filter(|weight| weight.is_finite() && *weight >= 0.0)
                .ok_or_else(|| {
                    format!("bad weight `{value}` for `{name}`: expected a number ≥ 0")
                })?;
            if weights[category.index()].replace(weight).is_some() {
                return Err(format!("category `{name}` is given twice"));
            }
        }
        let weights = weights.map(|weight| weight.unwrap_or(0.0));
        if weights.iter().sum::<f64>() <= 0.0 {
            return Err("every weight is 0: at least one category needs a weight above 0".into());
        }
        Ok(Mix { weights })
    }
}

/// Orders per category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Counts([u64; 4]);

impl Counts {
    pub(crate) fn get(&self, category: Category) -> u64 {
        self.0[category.index()]
    }

    pub(crate) fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = Category::ALL.map(|category| format!("{category}={}", self.get(category)));
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(s: &str) -> Mix {
        s.parse().unwrap()
    }

    #[test]
    fn default_mix_parses_to_the_default() {
        assert_eq!(mix(DEFAULT_MIX), Mix::default());
    }

    #[test]
    fn weights_need_not_be_percentages_and_missing_categories_weigh_zero() {
        let parsed = mix(" valid = 3 , invalid=1.5");
        assert_eq!(parsed.weight(Category::Valid), 3.0);
        assert_eq!(parsed.weight(Category::Invalid), 1.5);
        assert_eq!(parsed.weight(Category::UnknownSku), 0.0);
        assert_eq!(parsed.weight(Category::OverCredit), 0.0);
    }

    #[test]
    fn unknown_category_is_named() {
        let err = "valid=50,bogus=50".parse::<Mix>().unwrap_err();
        assert!(err.contains("`bogus`"), "{err}");
        assert!(err.contains("over_credit"), "{err}");
    }

    #[test]
    fn bad_numbers_are_named() {
        for bad in ["valid=x", "valid=-1", "valid=NaN", "valid=inf", "valid="] {
            let err = bad.parse::<Mix>().unwrap_err();
            assert!(err.contains("bad weight"), "{bad}: {err}");
            assert!(err.contains("`valid`"), "{bad}: {err}");
        }
    }

    #[test]
    fn malformed_mixes_are_refused() {
        for bad in [
            "",
            "valid",
            "valid=1,,invalid=1",
            "valid=1,valid=2",
            "valid=0",
        ] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?} was accepted");
        }
        let err = "valid=1,valid=2".parse::<Mix>().unwrap_err();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn counts_are_proportional_and_sum_to_the_order_count() {
        let counts = Mix::default().counts(1000);
        assert_eq!(counts.get(Category::Valid), 700);
        assert_eq!(counts.get(Category::UnknownSku), 100);
        assert_eq!(counts.get(Category::OverCredit), 100);
        assert_eq!(counts.get(Category::Invalid), 100);

        for orders in [1, 2, 3, 7, 10, 99, 101, 12_345] {
            for text in [
                DEFAULT_MIX,
                "valid=1,unknown_sku=1,over_credit=1",
                "invalid=3",
            ] {
                let counts = mix(text).counts(orders);
                assert_eq!(counts.total(), orders, "{text} × {orders}");
            }
        }
        let thirds = mix("valid=1,unknown_sku=1,over_credit=1").counts(10);
        assert_eq!(
            thirds.to_string(),
            "valid=4,unknown_sku=3,over_credit=3,invalid=0"
        );
    }

    #[test]
    fn zero_weight_categories_get_nothing() {
        let counts = mix("valid=1,invalid=0").counts(7);
        assert_eq!(counts.get(Category::Valid), 7);
        assert_eq!(counts.get(Category::Invalid), 0);
    }
}
