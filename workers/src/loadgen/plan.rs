//! The orders of one run, decided before anything is published: their
//! category, customer, items and the outcome their saga must end with.
//!
//! Everything that depends on the fleet's configuration is checked here, so
//! that an impossible plan (no big-stock SKU, credit too small for the
//! requested volume, no total between the credit limit and the order maximum)
//! is refused up front with the setting to change, not discovered as
//! "unexpected outcomes" at the end of a run.
//!
//! Customer ids carry the run id: payment-worker keeps each customer's used
//! credit, so customers shared with earlier runs would be declined.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use fleet_messages::{CancellationReason, OrderSubmitted, RejectionReason, SubmittedItem};
use rand::Rng;
use rand::seq::SliceRandom;
use uuid::Uuid;

use super::mix::{Category, Counts, Mix};
use super::outcome::Outcome;

/// SKUs with less seeded stock than this are never ordered (`SKU-SCARCE`
/// exists to exercise `insufficient_stock`, not to be drained by load).
pub(crate) const MIN_STOCK: i64 = 1000;
/// Items of a valid order: 1 to this many, of distinct SKUs.
const MAX_ITEMS: usize = 3;
/// Quantity of one item of a valid order: 1 to this many.
const MAX_QUANTITY: i64 = 3;
/// The most units a valid order can hold.
const MAX_UNITS: i64 = MAX_ITEMS as i64 * MAX_QUANTITY;
/// Unit prices of valid orders never exceed this, even with credit to spare.
const NOMINAL_MAX_PRICE_CENTS: i64 = 5_000;
/// Price of the single item of an `unknown_sku` order.
const UNKNOWN_SKU_PRICE_CENTS: i64 = 100;

/// The settings of the fleet that decide how an order ends.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// `inventory.seed` of inventory-worker.
    pub(crate) seed: BTreeMap<String, i64>,
    /// `payment.credit_limit_cents` of payment-worker.
    pub(crate) credit_limit_cents: i64,
    /// `order.max_total_cents` of order-worker.
    pub(crate) max_total_cents: i64,
}

/// How an `invalid` order breaks the rules (rotated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InvalidKind {
    NoItems,
    ZeroQuantity,
    NegativePrice,
}

impl InvalidKind {
    const ROTATION: [InvalidKind; 3] = [
        InvalidKind::NoItems,
        InvalidKind::ZeroQuantity,
        InvalidKind::NegativePrice,
    ];

    fn reason(self) -> RejectionReason {
        match self {
            InvalidKind::NoItems => RejectionReason::NoItems,
            InvalidKind::ZeroQuantity => RejectionReason::InvalidQuantity,
            InvalidKind::NegativePrice => RejectionReason::NegativePrice,
        }
    }
}

/// One order to submit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PlannedOrder {
    pub(crate) category: Category,
    pub(crate) expected: Outcome,
    pub(crate) submitted: OrderSubmitted,
}

impl PlannedOrder {
    pub(crate) fn order_id(&self) -> Uuid {
        self.submitted.order_id
    }

    #[cfg(test)]
    pub(crate) fn total_cents(&self) -> i64 {
        self.submitted
            .items
            .iter()
            .map(|item| item.quantity * item.unit_price_cents)
            .sum()
    }
}

/// The orders of a run, in publishing order (categories shuffled).
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub(crate) orders: Vec<PlannedOrder>,
    pub(crate) counts: Counts,
    /// Highest unit price of valid orders, chosen so no customer exceeds its
    /// credit (0 when there are no valid orders).
    pub(crate) max_unit_price_cents: i64,
}

/// What to plan.
#[derive(Clone, Debug)]
pub(crate) struct Request<'a> {
    pub(crate) orders: u64,
    pub(crate) mix: &'a Mix,
    pub(crate) customers: u64,
    /// Distinguishes this run's customers from earlier runs' ones.
    pub(crate) run_id: &'a str,
}

pub(crate) fn plan(
    request: &Request<'_>,
    limits: &Limits,
    rng: &mut impl Rng,
) -> anyhow::Result<Plan> {
    if request.customers == 0 {
        bail!("--customers must be at least 1");
    }
    let counts = request.mix.counts(request.orders);
    let valid = counts.get(Category::Valid);
    let over_credit = counts.get(Category::OverCredit);

    let skus: Vec<&str> = limits
        .seed
        .iter()
        .filter(|(_, stock)| **stock >= MIN_STOCK)
        .map(|(sku, _)| sku.as_str())
        .collect();
    if skus.is_empty() && counts.total() > counts.get(Category::UnknownSku) {
        bail!(
            "no SKU in inventory.seed has at least {MIN_STOCK} units; valid, over_credit and \
             invalid orders need one (seed: {:?})",
            limits.seed
        );
    }
    let max_unit_price_cents = max_unit_price(valid, request.customers, limits)?;
    let over_credit_total = if over_credit > 0 {
        over_credit_total(limits)?
    } else {
        0
    };

    let mut categories: Vec<Category> = Category::ALL
        .into_iter()
        .flat_map(|category| {
            std::iter::repeat_n(category, usize::try_from(counts.get(category)).unwrap_or(0))
        })
        .collect();
    categories.shuffle(rng);

    let customer = |n: u64| format!("loadgen-{}-c{}", request.run_id, n % request.customers);
    let mut seen = [0_u64; 4];
    let mut orders = Vec::with_capacity(categories.len());
    for category in categories {
        let n = {
            let slot = &mut seen[category.index()];
            *slot += 1;
            *slot - 1
        };
        let order_id = Uuid::now_v7();
        let (customer_id, items, expected) = match category {
            Category::Valid => (
                customer(n),
                valid_items(&skus, max_unit_price_cents, rng),
                Outcome::Confirmed,
            ),
            Category::UnknownSku => (
                customer(n),
                vec![SubmittedItem {
                    sku: unknown_sku(n, limits),
                    quantity: 1,
                    unit_price_cents: UNKNOWN_SKU_PRICE_CENTS.min(limits.max_total_cents),
                }],
                Outcome::Cancelled(CancellationReason::UnknownSku),
            ),
            Category::OverCredit => (
                format!(
                    "overdraft-{}",
                    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
                ),
                vec![SubmittedItem {
                    sku: pick(&skus, rng)?.to_owned(),
                    quantity: 1,
                    unit_price_cents: over_credit_total,
                }],
                Outcome::Cancelled(CancellationReason::PaymentDeclined),
            ),
            Category::Invalid => {
                let kind = InvalidKind::ROTATION[(n % 3) as usize];
                (
                    customer(n),
                    invalid_items(kind, &skus, rng)?,
                    Outcome::Rejected(kind.reason()),
                )
            }
        };
        orders.push(PlannedOrder {
            category,
            expected,
            submitted: OrderSubmitted {
                order_id,
                customer_id,
                items,
            },
        });
    }
    check_stock(&orders, limits)?;
    Ok(Plan {
        orders,
        counts,
        max_unit_price_cents,
    })
}

/// The highest unit price at which no customer's valid orders together
/// exceed the credit limit, with valid orders spread round-robin over the
/// customers.
fn max_unit_price(valid: u64, customers: u64, limits: &Limits) -> anyhow::Result<i64> {
    if valid == 0 {
        return Ok(0);
    }
    if limits.max_total_cents < MAX_UNITS {
        bail!(
            "order.max_total_cents ({}) is below {MAX_UNITS} cents: a valid order of up to \
             {MAX_UNITS} units at 1 cent would be rejected; drop `valid` from --mix",
            limits.max_total_cents
        );
    }
    let per_customer = valid.div_ceil(customers);
    let per_customer_i64 = i64::try_from(per_customer).context("too many orders per customer")?;
    let budget = limits.credit_limit_cents / per_customer_i64;
    let price = NOMINAL_MAX_PRICE_CENTS
        .min(budget / MAX_UNITS)
        .min(limits.max_total_cents / MAX_UNITS);
    if price < 1 {
        let orders_per_customer = limits.credit_limit_cents / MAX_UNITS;
        if orders_per_customer < 1 {
            bail!(
                "payment.credit_limit_cents ({}) cannot pay one valid order of up to \
                 {MAX_UNITS} units at 1 cent; drop `valid` from --mix",
                limits.credit_limit_cents
            );
        }
        let needed = valid.div_ceil(u64::try_from(orders_per_customer).unwrap_or(1));
        bail!(
            "{valid} valid orders over {customers} customers is up to {per_customer} orders per \
             customer, which at 1 cent per unit and up to {MAX_UNITS} units per order exceeds \
             payment.credit_limit_cents ({}); use --customers {needed} or more",
            limits.credit_limit_cents
        );
    }
    Ok(price)
}

/// A total above the credit limit and within the order maximum: halfway
/// between them, to stay clear of either boundary.
fn over_credit_total(limits: &Limits) -> anyhow::Result<i64> {
    let (credit, max) = (limits.credit_limit_cents, limits.max_total_cents);
    if credit >= max {
        bail!(
            "over_credit orders need a total above payment.credit_limit_cents ({credit}) and at \
             most order.max_total_cents ({max}); with these settings there is none: drop \
             `over_credit` from --mix"
        );
    }
    Ok(credit + ((max - credit) / 2).max(1))
}

fn pick<'a>(skus: &[&'a str], rng: &mut impl Rng) -> anyhow::Result<&'a str> {
    if skus.is_empty() {
        bail!("no SKU with at least {MIN_STOCK} units in inventory.seed");
    }
    Ok(skus[rng.random_range(0..skus.len())])
}

fn valid_items(skus: &[&str], max_price: i64, rng: &mut impl Rng) -> Vec<SubmittedItem> {
    let count = rng.random_range(1..=MAX_ITEMS.min(skus.len()).max(1));
    rand::seq::index::sample(rng, skus.len(), count.min(skus.len()))
        .into_iter()
        .map(|index| SubmittedItem {
            sku: skus[index].to_owned(),
            quantity: rng.random_range(1..=MAX_QUANTITY),
            unit_price_cents: rng.random_range(1..=max_price.max(1)),
        })
        .collect()
}

fn invalid_items(
    kind: InvalidKind,
    skus: &[&str],
    rng: &mut impl Rng,
) -> anyhow::Result<Vec<SubmittedItem>> {
    Ok(match kind {
        InvalidKind::NoItems => Vec::new(),
        InvalidKind::ZeroQuantity => vec![SubmittedItem {
            sku: pick(skus, rng)?.to_owned(),
            quantity: 0,
            unit_price_cents: 100,
        }],
        InvalidKind::NegativePrice => vec![SubmittedItem {
            sku: pick(skus, rng)?.to_owned(),
            quantity: 1,
            unit_price_cents: -100,
        }],
    })
}

/// `SKU-NOPE-<n>`, made longer in the unlikely case the seed has it.
fn unknown_sku(n: u64, limits: &Limits) -> String {
    let mut sku = format!("SKU-NOPE-{n}");
    while limits.seed.contains_key(&sku) {
        sku.push_str("-X");
    }
    sku
}

/// Refuses a plan whose reservations (valid and over_credit orders) exceed
/// the seeded stock of a SKU. Stock consumed by earlier runs in the same
/// database is not known here.
fn check_stock(orders: &[PlannedOrder], limits: &Limits) -> anyhow::Result<()> {
    let mut needed: BTreeMap<&str, i64> = BTreeMap::new();
    for order in orders {
        if matches!(order.category, Category::Valid | Category::OverCredit) {
            for item in &order.submitted.items {
                *needed.entry(item.sku.as_str()).or_default() += item.quantity;
            }
        }
    }
    for (sku, quantity) in needed {
        let stock = limits.seed.get(sku).copied().unwrap_or(0);
        if quantity > stock {
            bail!(
                "the plan needs up to {quantity} units of {sku} but inventory.seed has {stock}; \
                 use fewer --orders"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn limits() -> Limits {
        Limits {
            seed: [
                ("SKU-APPLE", 1_000_000),
                ("SKU-BANANA", 1_000_000),
                ("SKU-CHERRY", 1_000_000),
                ("SKU-DATE", 1_000_000),
                ("SKU-SCARCE", 10),
            ]
            .into_iter()
            .map(|(sku, stock)| (sku.to_owned(), stock))
            .collect(),
            credit_limit_cents: 100_000,
            max_total_cents: 1_000_000,
        }
    }

    fn make(orders: u64, mix: &str, customers: u64, limits: &Limits) -> anyhow::Result<Plan> {
        let mix: Mix = mix.parse().map_err(anyhow::Error::msg)?;
        let request = Request {
            orders,
            mix: &mix,
            customers,
            run_id: "t1",
        };
        plan(&request, limits, &mut StdRng::seed_from_u64(7))
    }

    #[test]
    fn every_category_gets_its_expected_outcome() {
        let plan = make(400, super::super::mix::DEFAULT_MIX, 10, &limits()).unwrap();
        assert_eq!(plan.orders.len(), 400);
        let ids: HashSet<Uuid> = plan.orders.iter().map(PlannedOrder::order_id).collect();
        assert_eq!(ids.len(), 400, "order ids are distinct");
        for order in &plan.orders {
            let expected = match order.category {
                Category::Valid => Outcome::Confirmed,
                Category::UnknownSku => Outcome::Cancelled(CancellationReason::UnknownSku),
                Category::OverCredit => Outcome::Cancelled(CancellationReason::PaymentDeclined),
                Category::Invalid => order.expected,
            };
            assert_eq!(order.expected, expected);
        }
        // Shuffled: the first 280 are not all valid.
        assert!(
            plan.orders[..280]
                .iter()
                .any(|o| o.category != Category::Valid)
        );
    }

    #[test]
    fn valid_orders_stay_within_credit_per_customer_and_use_big_stock_skus() {
        let limits = limits();
        for (orders, customers) in [(1000, 100), (1000, 1), (50, 3), (7, 100)] {
            let plan = make(orders, "valid=1", customers, &limits).unwrap();
            let mut spent: HashMap<&str, i64> = HashMap::new();
            let customer_ids: HashSet<&str> = plan
                .orders
                .iter()
                .map(|o| o.submitted.customer_id.as_str())
                .collect();
            assert_eq!(customer_ids.len() as u64, customers.min(orders));
            for order in &plan.orders {
                let items = &order.submitted.items;
                assert!((1..=3).contains(&items.len()));
                let skus: HashSet<&str> = items.iter().map(|i| i.sku.as_str()).collect();
                assert_eq!(skus.len(), items.len(), "distinct SKUs");
                for item in items {
                    assert!(limits.seed[&item.sku] >= MIN_STOCK, "{}", item.sku);
                    assert!((1..=3).contains(&item.quantity));
                    assert!(item.unit_price_cents >= 1);
                }
                assert!(order.total_cents() <= limits.max_total_cents);
                *spent
                    .entry(order.submitted.customer_id.as_str())
                    .or_default() += order.total_cents();
            }
            for (customer, total) in spent {
                assert!(
                    total <= limits.credit_limit_cents,
                    "{customer} spends {total} with {orders} orders over {customers} customers"
                );
            }
        }
    }

    #[test]
    fn too_many_valid_orders_per_customer_is_refused_with_advice() {
        let mut limits = limits();
        limits.credit_limit_cents = 90;
        // 90 cents pay 10 orders of 9 units at 1 cent: 11 orders for 1 customer is too many.
        let err = make(11, "valid=1", 1, &limits).unwrap_err().to_string();
        assert!(err.contains("--customers 2"), "{err}");
        assert!(make(10, "valid=1", 1, &limits).is_ok());
        limits.credit_limit_cents = 5;
        let err = make(1, "valid=1", 1, &limits).unwrap_err().to_string();
        assert!(err.contains("payment.credit_limit_cents"), "{err}");
    }

    #[test]
    fn unknown_sku_orders_name_a_sku_outside_the_seed() {
        let limits = limits();
        let plan = make(20, "unknown_sku=1", 5, &limits).unwrap();
        for order in &plan.orders {
            let [item] = order.submitted.items.as_slice() else {
                panic!("one item expected");
            };
            assert!(item.sku.starts_with("SKU-NOPE-"));
            assert!(!limits.seed.contains_key(&item.sku));
            assert_eq!(item.quantity, 1);
        }
    }

    #[test]
    fn over_credit_orders_exceed_credit_but_not_the_order_maximum() {
        let limits = limits();
        let plan = make(20, "over_credit=1", 5, &limits).unwrap();
        let customers: HashSet<&str> = plan
            .orders
            .iter()
            .map(|o| o.submitted.customer_id.as_str())
            .collect();
        assert_eq!(customers.len(), 20, "a dedicated customer per order");
        for order in &plan.orders {
            assert!(order.submitted.customer_id.starts_with("overdraft-"));
            let total = order.total_cents();
            assert!(total > limits.credit_limit_cents);
            assert!(total <= limits.max_total_cents);
        }

        let mut tight = limits.clone();
        tight.max_total_cents = tight.credit_limit_cents + 1;
        let plan = make(1, "over_credit=1", 1, &tight).unwrap();
        assert_eq!(plan.orders[0].total_cents(), tight.max_total_cents);
    }

    #[test]
    fn over_credit_is_impossible_when_credit_covers_the_maximum() {
        let mut limits = limits();
        limits.credit_limit_cents = limits.max_total_cents;
        let err = make(10, "valid=1,over_credit=1", 5, &limits)
            .unwrap_err()
            .to_string();
        assert!(err.contains("over_credit"), "{err}");
        // Without over_credit in the mix the same settings are fine.
        assert!(make(10, "valid=1", 5, &limits).is_ok());
    }

    #[test]
    fn invalid_orders_rotate_through_the_rules_they_break() {
        let plan = make(9, "invalid=1", 5, &limits()).unwrap();
        let mut reasons = HashMap::new();
        for order in &plan.orders {
            let Outcome::Rejected(reason) = order.expected else {
                panic!("invalid orders are rejected");
            };
            let items = &order.submitted.items;
            match reason {
                RejectionReason::NoItems => assert!(items.is_empty()),
                RejectionReason::InvalidQuantity => assert_eq!(items[0].quantity, 0),
                RejectionReason::NegativePrice => assert!(items[0].unit_price_cents < 0),
                RejectionReason::TotalOverLimit => panic!("not produced"),
            }
            *reasons.entry(reason).or_insert(0) += 1;
        }
        assert_eq!(reasons.len(), 3);
        assert!(reasons.values().all(|n| *n == 3));
    }

    #[test]
    fn no_big_stock_sku_is_refused() {
        let mut limits = limits();
        limits.seed.retain(|sku, _| sku == "SKU-SCARCE");
        assert!(make(10, "valid=1", 5, &limits).is_err());
        // unknown_sku orders need no seeded SKU.
        assert!(make(10, "unknown_sku=1", 5, &limits).is_ok());
    }

    #[test]
    fn a_plan_larger_than_the_seed_is_refused() {
        let mut limits = limits();
        for stock in limits.seed.values_mut() {
            *stock = MIN_STOCK;
        }
        let err = make(5000, "valid=1", 5000, &limits)
            .unwrap_err()
            .to_string();
        assert!(err.contains("inventory.seed"), "{err}");
    }
}
