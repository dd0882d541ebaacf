//! Each thread scans with a copy of the served policy of its own.
//!
//! A compiled policy's automata keep their search caches in pools, and a pool hands its first
//! caller's thread a cache without synchronisation while every other thread takes a mutex to
//! borrow one: with one runtime per core, every worker but one paid that on each of the dozen
//! searches a streamed answer makes (about 2,000 instructions a request), and which worker was
//! the fast one depended on who scanned first. A copy shares every automaton and none of the
//! pools ([`Policy`]'s `Clone`), so a copy per thread makes each thread the owner of its own.
//!
//! The copy is replaced the first time the thread asks after a reload; until then it keeps the
//! previous policy's automata alive, which a thread that serves no request does not notice.

use std::cell::RefCell;
use std::sync::Arc;

use super::compile::Policy;

thread_local! {
    /// The served policy this thread last saw, and this thread's copy of it.
    static COPY: RefCell<Option<(Arc<Policy>, Arc<Policy>)>> = const { RefCell::new(None) };
}

/// This thread's copy of `served`, made on first use.
pub(super) fn copy_of(served: &Arc<Policy>) -> Arc<Policy> {
    COPY.with(|slot| {
        let Ok(mut slot) = slot.try_borrow_mut() else {
            // Only reachable if a policy were cloned from inside this function; the served
            // policy itself is always a correct answer.
            return Arc::clone(served);
        };
        match &*slot {
            Some((of, copy)) if Arc::ptr_eq(of, served) => Arc::clone(copy),
            _ => {
                let copy = Arc::new(Policy::clone(served));
                *slot = Some((Arc::clone(served), Arc::clone(&copy)));
                copy
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str =
        "[[rule]]\nid = \"a\"\nkind = \"regex\"\npattern = \"secret\"\naction = \"block\"\n";

    #[test]
    fn a_thread_keeps_one_copy_per_served_policy() {
        let served = Arc::new(Policy::from_toml(POLICY).unwrap());
        let first = copy_of(&served);
        assert!(
            !Arc::ptr_eq(&first, &served),
            "a copy, not the served policy"
        );
        assert!(
            Arc::ptr_eq(&first, &copy_of(&served)),
            "the same copy again"
        );
        assert_eq!(first.version(), served.version());

        // Another thread gets a copy of its own.
        let theirs = {
            let served = Arc::clone(&served);
            std::thread::spawn(move || copy_of(&served)).join().unwrap()
        };
        assert!(!Arc::ptr_eq(&theirs, &first));

        // A new served policy (a reload) replaces the copy.
        let reloaded = Arc::new(Policy::from_toml(&format!("{POLICY}# changed\n")).unwrap());
        let second = copy_of(&reloaded);
        assert!(!Arc::ptr_eq(&second, &first));
        assert_eq!(second.version(), reloaded.version());
        assert_ne!(second.version(), first.version());
    }
}
