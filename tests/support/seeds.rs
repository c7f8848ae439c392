//! Named scenarios for the differential driver: each is a regression test in `model.rs` and,
//! encoded, a seed of the fuzz corpus (`fuzz/corpus/tree_ops/seed-<name>`).
//!
//! Indices in steps are positions at run time: `held` starts as `[background]` and every
//! successful child or upgrade is appended; a drop removes and shifts. Guards (`g`) are counted
//! among held guards only, registrations (`r`) among those whose `AfterFunc` is still held.

use crate::tree_ops::{Config, Make, Program, Step, Then, ValueKind, Why, CAPACITIES};

use Step::{
    AfterFunc, Cancel, CheckAll, Clone, Downgrade, DropGuard, DropHandle, ForgetReg, Read,
    ReadWeak, Stop, Upgrade,
};

const WC: Make = Make::WithCancel { try_: false };
const TRY_WC: Make = Make::WithCancel { try_: true };
const BUILD: Make = Make::Build { try_: false };
const TRY_BUILD: Make = Make::Build { try_: true };
const DETACHED: Make = Make::WithoutCancel;

fn program(capacity: u32, lazy: bool, steps: Vec<Step>) -> Program {
    program_with(capacity, lazy, false, 0, steps)
}

fn program_with(
    capacity: u32,
    lazy: bool,
    small_cache: bool,
    seed: u8,
    steps: Vec<Step>,
) -> Program {
    let index = CAPACITIES
        .iter()
        .position(|&c| c == capacity)
        .expect("a capacity the header can encode");
    Program {
        config: Config {
            capacity: index as u8,
            lazy,
            small_cache,
            seed,
        },
        steps,
    }
}

fn child(parent: u8, make: Make) -> Step {
    Step::Child { parent, make }
}

fn value(kind: ValueKind, arg: u8) -> Make {
    Make::Value {
        kind,
        arg,
        try_: false,
    }
}

fn builder(req: u8, op: Option<u8>, user: bool, trace: bool, then: Then) -> Make {
    Make::Builder {
        req,
        op,
        user,
        trace,
        then,
    }
}

fn af(h: u8) -> Step {
    AfterFunc {
        h,
        boxed: false,
        try_: false,
    }
}

fn af_boxed(h: u8) -> Step {
    AfterFunc {
        h,
        boxed: true,
        try_: false,
    }
}

fn cancel(g: u8, why: Why) -> Step {
    Cancel { g, why }
}

/// A named scenario.
pub type Scenario = (&'static str, fn() -> Program);

/// Scenarios that pass on a correct library; each is a test of the `scenarios!` list in
/// `model.rs` and a committed corpus seed.
pub const ALL: &[Scenario] = &[
    (
        "cancel_propagates_to_descendants",
        cancel_propagates_to_descendants,
    ),
    ("first_cause_wins", first_cause_wins),
    (
        "lazy_ancestor_cancel_beats_later_child_cancel",
        lazy_ancestor_cancel_beats_later_child_cancel,
    ),
    (
        "lazy_ancestor_cancel_beats_owner_drop",
        lazy_ancestor_cancel_beats_owner_drop,
    ),
    (
        "owner_drop_cascades_through_plain_children",
        owner_drop_cascades_through_plain_children,
    ),
    (
        "without_cancel_shields_descendants",
        without_cancel_shields_descendants,
    ),
    (
        "values_are_inherited_and_typed",
        values_are_inherited_and_typed,
    ),
    (
        "after_func_runs_once_and_stop_tells_the_truth",
        after_func_runs_once_and_stop_tells_the_truth,
    ),
    (
        "weak_never_reaches_a_reused_slot",
        weak_never_reaches_a_reused_slot,
    ),
    ("exhaustion_sheds_work", exhaustion_sheds_work),
    (
        "deep_chain_cancel_middle_then_root",
        deep_chain_cancel_middle_then_root,
    ),
    (
        "lazy_deep_chain_read_only_at_the_leaf",
        lazy_deep_chain_read_only_at_the_leaf,
    ),
    (
        "after_func_registered_across_a_detached_boundary",
        after_func_registered_across_a_detached_boundary,
    ),
    ("seeded_drop_order", seeded_drop_order),
    ("small_thread_cache_churn", small_thread_cache_churn),
    (
        "upgraded_weak_is_a_full_handle",
        upgraded_weak_is_a_full_handle,
    ),
    ("cancel_with_every_origin", cancel_with_every_origin),
    (
        "children_of_a_cancelled_context",
        children_of_a_cancelled_context,
    ),
];

/// Regressions for library bugs that are now fixed: each has its own test in `model.rs` (named
/// after it, with the bug it guards against) and is a committed corpus seed.
///
/// - values under an exhausted parent: `with_value` on a context born cancelled (pool
///   exhausted) never dropped the value;
/// - lease zombies: an ancestor's cancel skipped a registered child whose handles were all
///   gone, so the `after_func`s pending below it never ran and their slots leaked.
pub const FIXED_BUGS: &[Scenario] = &[
    (
        "value_under_an_exhausted_parent_is_dropped",
        value_under_an_exhausted_parent_is_dropped,
    ),
    (
        "after_func_below_a_dropped_handle_runs_on_ancestor_cancel",
        after_func_below_a_dropped_handle_runs_on_ancestor_cancel,
    ),
    (
        "after_func_below_a_handleless_context_runs_on_ancestor_cancel",
        after_func_below_a_handleless_context_runs_on_ancestor_cancel,
    ),
];

pub fn cancel_propagates_to_descendants() -> Program {
    program(
        64,
        false,
        vec![
            child(0, WC),                                           // 1: A, g0
            child(1, WC),                                           // 2: B, g1
            child(2, BUILD),                                        // 3: plain under B
            child(1, value(ValueKind::U64, 42)),                    // 4: value under A
            child(4, builder(7, Some(1), true, true, Then::Build)), // 5
            cancel(0, Why::Code(7)),
            CheckAll,
            cancel(1, Why::Message(0)), // already cancelled through A: false
            CheckAll,
        ],
    )
}

pub fn first_cause_wins() -> Program {
    program(
        64,
        false,
        vec![
            child(0, WC), // 1, g0
            cancel(0, Why::Message(0)),
            cancel(0, Why::Code(3)),
            cancel(0, Why::Shutdown),
            Read { h: 1 },
            child(1, WC), // 2, g1: born cancelled
            Read { h: 2 },
            cancel(1, Why::Deadline),
            Read { h: 2 },
        ],
    )
}

pub fn lazy_ancestor_cancel_beats_later_child_cancel() -> Program {
    program(
        64,
        true,
        vec![
            child(0, WC), // 1, g0
            child(1, WC), // 2, g1
            child(2, WC), // 3, g2
            cancel(0, Why::Shutdown),
            cancel(2, Why::Code(9)), // nobody read 3: its cancel must still lose
            Read { h: 3 },
            Read { h: 2 },
        ],
    )
}

pub fn lazy_ancestor_cancel_beats_owner_drop() -> Program {
    program(
        64,
        true,
        vec![
            child(0, WC),   // 1, g0
            child(1, WC),   // 2, g1
            Clone { h: 2 }, // 3
            cancel(0, Why::Deadline),
            DropGuard { g: 1 }, // held: [bg, 1, 3]
            Read { h: 2 },      // Parent(DeadlineExceeded), not OwnerDropped
        ],
    )
}

pub fn owner_drop_cascades_through_plain_children() -> Program {
    program(
        64,
        false,
        vec![
            child(0, WC),    // 1, g0
            child(1, BUILD), // 2
            child(2, WC),    // 3, g1
            af(3),           // r0
            af_boxed(2),     // r1
            DropGuard { g: 0 },
            CheckAll,
            Stop { r: 0 },
            Stop { r: 1 },
        ],
    )
}

pub fn without_cancel_shields_descendants() -> Program {
    program(
        64,
        false,
        vec![
            child(0, WC),       // 1, g0
            child(1, DETACHED), // 2
            child(2, BUILD),    // 3: never cancelled
            child(2, WC),       // 4, g1
            af(3),              // r0: never runs
            af(4),              // r1
            af_boxed(2),        // r2: never runs
            cancel(0, Why::Code(1)),
            CheckAll,
            Stop { r: 0 },
            Stop { r: 0 },
            cancel(1, Why::Shutdown),
            CheckAll,
            Stop { r: 1 },
        ],
    )
}

pub fn values_are_inherited_and_typed() -> Program {
    program(
        64,
        false,
        vec![
            child(0, builder(7, Some(0), true, true, Then::WithCancel)), // 1, g0
            child(1, value(ValueKind::U64, 5)),                          // 2
            child(2, value(ValueKind::Inline, 9)),                       // 3
            child(3, value(ValueKind::Boxed, 11)),                       // 4
            child(4, value(ValueKind::U64, 6)),                          // 5
            child(5, builder(8, None, false, false, Then::Value(77))),   // 6
            child(6, DETACHED),                                          // 7
            child(0, value(ValueKind::Inline, 1)),                       // 8: under the background
            CheckAll,
            DropHandle { h: 3 },
            DropHandle { h: 2 }, // their values live on in their descendants
            CheckAll,
            cancel(0, Why::None),
            CheckAll,
        ],
    )
}

pub fn after_func_runs_once_and_stop_tells_the_truth() -> Program {
    program(
        64,
        false,
        vec![
            child(0, WC), // 1, g0
            af(1),        // r0
            af_boxed(1),  // r1
            Stop { r: 1 },
            cancel(0, Why::None),
            cancel(0, Why::None),
            Stop { r: 0 }, // it ran
            af(1),         // r2: runs at once
            Stop { r: 2 },
            af(0), // r3: on the background, never runs
            Stop { r: 3 },
            Stop { r: 3 },
        ],
    )
}

/// Regression (fixed bug, lease zombies): a pending `after_func` keeps its context alive after
/// the context's last handle is gone, and an ancestor's cancel must still run it (the library
/// skipped such a handleless "zombie" child, so the closure never ran and its slots leaked).
pub fn after_func_below_a_dropped_handle_runs_on_ancestor_cancel() -> Program {
    program(
        64,
        false,
        vec![
            child(0, WC),    // 1, g0
            child(1, BUILD), // 2
            Downgrade { h: 2 },
            af(2),
            DropHandle { h: 2 }, // the registration alone keeps 2 alive
            DropGuard { g: 0 },  // must run it, then release 1 and 2
            ReadWeak { w: 0 },
            CheckAll,
        ],
    )
}

pub fn weak_never_reaches_a_reused_slot() -> Program {
    program(
        1,
        false,
        vec![
            child(0, WC), // 1, g0
            Downgrade { h: 1 },
            DropGuard { g: 0 },
            child(0, WC), // 1 again, in the same slot
            Upgrade { w: 0 },
            ReadWeak { w: 0 },
            Read { h: 1 },
        ],
    )
}

pub fn exhaustion_sheds_work() -> Program {
    program(
        2,
        false,
        vec![
            child(0, WC),                          // 1, g0
            child(1, WC),                          // 2, g1: the pool is full
            child(1, TRY_WC),                      // Err
            child(1, WC),                          // 3, g2: born cancelled (PoolExhausted)
            child(3, BUILD),                       // 4: Parent(PoolExhausted)
            child(3, TRY_BUILD),                   // 5: Ok, born cancelled too
            child(1, value(ValueKind::Inline, 3)), // 6: born cancelled, value dropped at once
            child(
                1,
                Make::Value {
                    kind: ValueKind::Boxed,
                    arg: 4,
                    try_: true,
                },
            ), // Err, value dropped
            cancel(2, Why::Code(1)),               // on the exhausted guard: false
            AfterFunc {
                h: 1,
                boxed: false,
                try_: true,
            }, // handed back
            af(1),                                 // runs at once
            af(3),                                 // on a cancelled context: runs at once
            Downgrade { h: 3 },
            Upgrade { w: 0 }, // 7
            CheckAll,
            DropGuard { g: 1 },
            child(1, TRY_WC),
            CheckAll,
        ],
    )
}

pub fn deep_chain_cancel_middle_then_root() -> Program {
    program(
        64,
        false,
        vec![
            child(0, WC),                       // 1, g0
            child(1, WC),                       // 2, g1
            child(2, WC),                       // 3, g2
            child(3, BUILD),                    // 4
            child(4, WC),                       // 5, g3
            child(5, value(ValueKind::U64, 1)), // 6
            cancel(2, Why::Message(2)),
            CheckAll,
            cancel(0, Why::Code(31)),
            CheckAll,
            cancel(3, Why::None),
        ],
    )
}

pub fn lazy_deep_chain_read_only_at_the_leaf() -> Program {
    program(
        64,
        true,
        vec![
            child(0, WC),                         // 1, g0
            child(1, WC),                         // 2, g1
            child(2, WC),                         // 3, g2
            child(3, BUILD),                      // 4
            child(4, WC),                         // 5, g3
            child(5, value(ValueKind::Boxed, 1)), // 6
            cancel(0, Why::Code(5)),
            cancel(2, Why::Message(1)),
            cancel(3, Why::Shutdown),
            Read { h: 6 },
            Read { h: 3 },
        ],
    )
}

pub fn after_func_registered_across_a_detached_boundary() -> Program {
    program(
        64,
        false,
        vec![
            child(0, WC),       // 1, g0
            child(1, DETACHED), // 2
            child(2, WC),       // 3, g1
            child(3, BUILD),    // 4
            af(4),              // r0
            af_boxed(3),        // r1
            cancel(0, Why::Code(2)),
            CheckAll,
            DropGuard { g: 1 },
            CheckAll,
        ],
    )
}

pub fn seeded_drop_order() -> Program {
    program_with(
        16,
        false,
        true,
        0xA5,
        vec![
            child(0, WC),                         // 1
            child(1, WC),                         // 2
            child(2, BUILD),                      // 3
            Clone { h: 2 },                       // 4
            child(0, value(ValueKind::Boxed, 5)), // 5
            child(5, WC),                         // 6
            Downgrade { h: 3 },
            Downgrade { h: 6 },
            af(3),
            af_boxed(6),
            ForgetReg { r: 0 },
            child(6, builder(3, Some(2), true, false, Then::TryWithCancel)), // 7
        ],
    )
}

pub fn small_thread_cache_churn() -> Program {
    let mut steps = Vec::new();
    for round in 0..6u8 {
        steps.push(child(0, WC));
        steps.push(child(1, BUILD));
        steps.push(child(1, value(ValueKind::Inline, round)));
        steps.push(af(2));
        steps.push(DropGuard { g: 0 });
        steps.push(DropHandle { h: 1 });
        steps.push(DropHandle { h: 1 });
    }
    program_with(4, false, true, 7, steps)
}

pub fn upgraded_weak_is_a_full_handle() -> Program {
    program(
        64,
        false,
        vec![
            child(0, WC),    // 1, g0
            child(1, BUILD), // 2
            Downgrade { h: 2 },
            Upgrade { w: 0 },    // 3
            DropHandle { h: 2 }, // held: [bg, 1, 3]
            Read { h: 2 },
            cancel(0, Why::Shutdown),
            ReadWeak { w: 0 },
            Read { h: 2 },
            DropHandle { h: 2 },
            ReadWeak { w: 0 },
        ],
    )
}

pub fn cancel_with_every_origin() -> Program {
    let whys = [
        Why::None,
        Why::Code(0),
        Why::Code(31),
        Why::Message(0),
        Why::Message(1),
        Why::Message(3),
        Why::Shutdown,
        Why::Deadline,
        Why::OwnerDropped,
        Why::Exhausted,
    ];
    let mut steps = Vec::new();
    for i in 0..whys.len() as u8 {
        steps.push(child(0, WC)); // 1 + 2i, g_i
        steps.push(child(1 + 2 * i, BUILD));
    }
    for (i, why) in whys.into_iter().enumerate() {
        steps.push(cancel(i as u8, why));
    }
    steps.push(CheckAll);
    program(64, true, steps)
}

pub fn children_of_a_cancelled_context() -> Program {
    program(
        64,
        false,
        vec![
            child(0, WC), // 1, g0
            cancel(0, Why::OwnerDropped),
            child(1, BUILD),    // 2: born cancelled
            child(1, DETACHED), // 3: not cancelled
            child(3, WC),       // 4, g1
            af(2),              // runs at once
            af(3),              // never
            af(4),              // pending
            CheckAll,
            DropGuard { g: 1 },
            CheckAll,
        ],
    )
}

/// Regression (fixed bug): `with_value` on a context born cancelled returned another context
/// born cancelled but never dropped the value it was given.
pub fn value_under_an_exhausted_parent_is_dropped() -> Program {
    program(
        1,
        false,
        vec![
            child(0, WC),                          // 1: takes the only slot
            child(1, WC),                          // 2: born cancelled
            child(2, value(ValueKind::Inline, 1)), // 3: born cancelled; the value must be dropped
            child(
                2,
                Make::Value {
                    kind: ValueKind::Boxed,
                    arg: 2,
                    try_: true,
                },
            ),
        ],
    )
}

/// Regression (fixed bug, lease zombies): as
/// [`after_func_below_a_dropped_handle_runs_on_ancestor_cancel`], but the context without a
/// handle is in the middle and the `after_func` is registered after its handle was dropped.
pub fn after_func_below_a_handleless_context_runs_on_ancestor_cancel() -> Program {
    program(
        64,
        false,
        vec![
            child(0, WC),        // 1, g0
            child(1, BUILD),     // 2: Z
            child(2, BUILD),     // 3: X
            DropHandle { h: 2 }, // Z has no handle; X keeps it alive. held: [bg, 1, X]
            af(2),               // on X
            DropGuard { g: 0 },  // must run it
            CheckAll,
        ],
    )
}
