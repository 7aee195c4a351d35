//! One table per label concept: an enum whose variants are the values of a
//! metric label (or a dashboard name), written once with their text. The
//! list of every variant, the count, each variant's slot in a fixed array
//! and its text all come from that one table, so adding a route, a refusal
//! reason or a header is adding one line, and no list is kept in step with
//! the enum by hand.

/// Declares a field-less enum and, from the same lines, `ALL` (every
/// variant, in order), `COUNT`, `slot()` (the variant's index in `ALL`) and
/// `as_label()` (its text).
///
/// ```ignore
/// label_enum! {
///     /// Where a request went.
///     pub enum Route { Api => "api", Site => "site" }
/// }
/// ```
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        #[allow(dead_code)]
        impl $name {
            /// Every variant, in declaration order (`slot` is the index).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// How many variants there are.
            pub const COUNT: usize = $name::ALL.len();

            /// The variant's index in [`Self::ALL`].
            pub const fn slot(self) -> usize {
                self as usize
            }

            /// The label value: a fixed, bounded name.
            pub const fn as_label(self) -> &'static str {
                match self {
                    $( $name::$variant => $label ),+
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    label_enum! {
        /// A test table.
        enum Sample { A => "a", B => "b_label", C => "c" }
    }

    #[test]
    fn the_table_gives_every_list() {
        assert_eq!(Sample::COUNT, 3);
        assert_eq!(Sample::ALL, &[Sample::A, Sample::B, Sample::C]);
        for (i, s) in Sample::ALL.iter().enumerate() {
            assert_eq!(s.slot(), i);
        }
        assert_eq!(Sample::B.as_label(), "b_label");
    }
}
