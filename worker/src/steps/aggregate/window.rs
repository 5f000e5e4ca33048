//! Window shapes and aggregate accumulators. Pure.
//!
//! Window semantics follow Flink's: a window is `[start, end)`; it fires once the watermark
//! reaches `end - 1`, and keeps its state until the watermark reaches `end - 1 + allowedLateness`,
//! updates in between firing again. Tumbling and hopping windows are aligned to the epoch.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sluice_crds::v1alpha1::AggregateFunction;

/// Window shapes, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// No window: one accumulator per group for all time.
    Global,
    /// Fixed, non-overlapping.
    Tumbling { size: i64 },
    /// Fixed, overlapping, starting every `advance`.
    Hopping { size: i64, advance: i64 },
    /// Per group, closed by a gap.
    Session { gap: i64 },
}

impl Shape {
    /// The starts of the fixed windows holding `ts`, latest first (`size` apart for hopping).
    pub fn starts(self, ts: i64, out: &mut Vec<i64>) {
        out.clear();
        match self {
            Shape::Global => out.push(0),
            Shape::Tumbling { size } => out.push(ts.div_euclid(size) * size),
            Shape::Hopping { size, advance } => {
                let mut start = ts.div_euclid(advance) * advance;
                while start > ts - size {
                    out.push(start);
                    start -= advance;
                }
            }
            Shape::Session { .. } => {}
        }
    }

    /// The end (exclusive) of the fixed window starting at `start`.
    pub fn end(self, start: i64) -> i64 {
        match self {
            Shape::Global => i64::MAX,
            Shape::Tumbling { size } | Shape::Hopping { size, .. } => start.saturating_add(size),
            Shape::Session { gap } => start.saturating_add(gap),
        }
    }
}

/// One session of a group.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// Event time of its first record.
    pub start: i64,
    /// Event time of its last record plus the gap (exclusive).
    pub end: i64,
    /// Its accumulator.
    pub acc: Acc,
}

/// The running state of one aggregate function.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Slot {
    /// Records counted.
    n: i64,
    /// Integer sum while every input is an integer.
    int_sum: i64,
    /// Float sum.
    float_sum: f64,
    /// Whether a float (or an integer overflow) was summed.
    float: bool,
    /// Min, max, first or last value.
    value: Option<Json>,
    /// Event time of `value` (first, last).
    at: i64,
}

/// The accumulators of one group (and window).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Acc {
    /// One per aggregation, in declaration order.
    pub slots: Vec<Slot>,
}

/// Why a value cannot be aggregated.
#[derive(Debug, thiserror::Error)]
#[error("{function:?} cannot aggregate {value}: {why}")]
pub struct AggregateError {
    function: AggregateFunction,
    value: String,
    why: &'static str,
}

impl Acc {
    /// An empty accumulator for `n` aggregations.
    pub fn new(n: usize) -> Self {
        Self {
            slots: vec![Slot::default(); n],
        }
    }

    /// Adds one record: `values[i]` is aggregation `i`'s input (`Null` for count).
    pub fn add(
        &mut self,
        functions: &[AggregateFunction],
        values: &[Json],
        at: i64,
    ) -> Result<(), AggregateError> {
        for ((slot, function), value) in self.slots.iter_mut().zip(functions).zip(values) {
            slot.add(*function, value, at)?;
        }
        Ok(())
    }

    /// Merges `other` into this one (sessions that join).
    pub fn merge(&mut self, functions: &[AggregateFunction], other: &Acc) {
        for ((slot, function), theirs) in self.slots.iter_mut().zip(functions).zip(&other.slots) {
            slot.merge(*function, theirs);
        }
    }

    /// The result as a JSON object, one field per aggregation.
    pub fn result(
        &self,
        names: &[String],
        functions: &[AggregateFunction],
    ) -> serde_json::Map<String, Json> {
        names
            .iter()
            .zip(functions)
            .zip(&self.slots)
            .map(|((name, function), slot)| (name.clone(), slot.result(*function)))
            .collect()
    }
}

fn number(value: &Json) -> Option<(Option<i64>, f64)> {
    match value {
        Json::Number(n) => Some((n.as_i64(), n.as_f64()?)),
        _ => None,
    }
}

/// Orders two values min/max can compare: numbers with numbers, strings with strings.
fn compare(a: &Json, b: &Json) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Json::String(a), Json::String(b)) => Some(a.cmp(b)),
        _ => number(a)?.1.partial_cmp(&number(b)?.1),
    }
}

impl Slot {
    fn add(
        &mut self,
        function: AggregateFunction,
        value: &Json,
        at: i64,
    ) -> Result<(), AggregateError> {
        use AggregateFunction as F;
        let refuse = |why| AggregateError {
            function,
            value: value.to_string(),
            why,
        };
        match function {
            F::Count => {}
            F::Sum | F::Avg => {
                let (int, float) = number(value).ok_or_else(|| refuse("not a number"))?;
                match int.and_then(|i| self.int_sum.checked_add(i)) {
                    Some(sum) if !self.float => self.int_sum = sum,
                    _ => self.float = true,
                }
                self.float_sum += float;
            }
            F::Min | F::Max => {
                if value.is_null() {
                    return Ok(());
                }
                let replace = match &self.value {
                    None => {
                        compare(value, value).ok_or_else(|| refuse("not a number or string"))?;
                        true
                    }
                    Some(current) => {
                        let order = compare(value, current)
                            .ok_or_else(|| refuse("not comparable with the values before it"))?;
                        (function == F::Min && order.is_lt())
                            || (function == F::Max && order.is_gt())
                    }
                };
                if replace {
                    self.value = Some(value.clone());
                }
            }
            F::First => {
                if self.n == 0 || at < self.at {
                    self.value = Some(value.clone());
                    self.at = at;
                }
            }
            F::Last => {
                if self.n == 0 || at >= self.at {
                    self.value = Some(value.clone());
                    self.at = at;
                }
            }
        }
        self.n += 1;
        Ok(())
    }

    fn merge(&mut self, function: AggregateFunction, other: &Slot) {
        use AggregateFunction as F;
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = other.clone();
            return;
        }
        match function {
            F::Count => {}
            F::Sum | F::Avg => {
                match self.int_sum.checked_add(other.int_sum) {
                    Some(sum) if !self.float && !other.float => self.int_sum = sum,
                    _ => self.float = true,
                }
                self.float_sum += other.float_sum;
            }
            F::Min | F::Max => {
                if let Some(theirs) = &other.value {
                    let replace = match &self.value {
                        None => true,
                        Some(mine) => compare(theirs, mine).is_some_and(|o| {
                            (function == F::Min && o.is_lt()) || (function == F::Max && o.is_gt())
                        }),
                    };
                    if replace {
                        self.value = Some(theirs.clone());
                    }
                }
            }
            F::First => {
                if other.at < self.at {
                    self.value = other.value.clone();
                    self.at = other.at;
                }
            }
            F::Last => {
                if other.at >= self.at {
                    self.value = other.value.clone();
                    self.at = other.at;
                }
            }
        }
        self.n += other.n;
    }

    fn result(&self, function: AggregateFunction) -> Json {
        use AggregateFunction as F;
        match function {
            F::Count => self.n.into(),
            F::Sum if self.float => Json::from(self.float_sum),
            F::Sum => self.int_sum.into(),
            F::Avg if self.n == 0 => Json::Null,
            F::Avg => Json::from(self.float_sum / self.n as f64),
            F::Min | F::Max | F::First | F::Last => self.value.clone().unwrap_or(Json::Null),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AggregateFunction as F;

    #[test]
    fn fixed_windows_hold_the_records_between_their_bounds() {
        let mut starts = Vec::new();
        Shape::Tumbling { size: 10 }.starts(25, &mut starts);
        assert_eq!(starts, vec![20]);
        Shape::Tumbling { size: 10 }.starts(-1, &mut starts);
        assert_eq!(starts, vec![-10]);
        Shape::Hopping {
            size: 10,
            advance: 5,
        }
        .starts(12, &mut starts);
        assert_eq!(starts, vec![10, 5]);
        Shape::Hopping {
            size: 10,
            advance: 5,
        }
        .starts(10, &mut starts);
        assert_eq!(starts, vec![10, 5]);
        Shape::Hopping {
            size: 10,
            advance: 10,
        }
        .starts(10, &mut starts);
        assert_eq!(starts, vec![10]);
    }

    #[test]
    fn accumulators_compute_every_function_and_merge() {
        let functions = [F::Count, F::Sum, F::Min, F::Max, F::Avg, F::First, F::Last];
        let names: Vec<String> = ["n", "sum", "min", "max", "avg", "first", "last"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut a = Acc::new(functions.len());
        for (v, at) in [(3, 30), (1, 10), (8, 20)] {
            a.add(
                &functions,
                &[
                    Json::Null,
                    v.into(),
                    v.into(),
                    v.into(),
                    v.into(),
                    v.into(),
                    v.into(),
                ],
                at,
            )
            .unwrap();
        }
        let result = Json::Object(a.result(&names, &functions));
        assert_eq!(
            result,
            serde_json::json!({"n": 3, "sum": 12, "min": 1, "max": 8, "avg": 4.0, "first": 1, "last": 3})
        );
        let mut b = Acc::new(functions.len());
        b.add(
            &functions,
            &[
                Json::Null,
                0.5.into(),
                0.5.into(),
                0.5.into(),
                0.5.into(),
                0.5.into(),
                0.5.into(),
            ],
            40,
        )
        .unwrap();
        a.merge(&functions, &b);
        assert_eq!(
            Json::Object(a.result(&names, &functions)),
            serde_json::json!({"n": 4, "sum": 12.5, "min": 0.5, "max": 8, "avg": 3.125, "first": 1, "last": 0.5})
        );
        assert!(
            a.add(
                &functions,
                &[
                    Json::Null,
                    "x".into(),
                    1.into(),
                    1.into(),
                    1.into(),
                    1.into(),
                    1.into()
                ],
                1
            )
            .is_err()
        );
    }
}
