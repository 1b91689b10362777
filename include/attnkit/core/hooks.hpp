#pragma once
/// \file
/// Detecting a variant's optional members ("hooks") by NAME, whatever their
/// signature, so that a hook spelt right but declared wrong is a compile error
/// with a message instead of a silently skipped fast path (a `requires` probe of
/// the expected call is simply false for a wrong signature).
///
/// The test derives from T and from a class that also has a member of that name:
/// naming it is ambiguous exactly when T has one (function, template, overload
/// set or data member alike).
#include <type_traits>

/// Defines `attnkit::detail::has_member_<NAME><T>`: true iff class T has a member
/// called NAME (any kind). False for non-class and final types.
#define ATTNKIT_DETAIL_MEMBER_DETECTOR(NAME) ATTNKIT_DETAIL_MEMBER_DETECTOR_IN(attnkit::detail, NAME)

/// The same in namespace NS (`NS::has_member_<NAME><T>`), for a family whose hook
/// shares its name with another family's (each family detects its own).
#define ATTNKIT_DETAIL_MEMBER_DETECTOR_IN(NS, NAME)                                       \
  namespace NS {                                                                          \
  struct member_probe_##NAME {                                                            \
    int NAME;                                                                             \
  };                                                                                      \
  template <class T>                                                                      \
  struct member_probe_derived_##NAME : T, member_probe_##NAME {};                         \
  template <class T>                                                                      \
  constexpr bool has_member_##NAME##_impl() {                                             \
    if constexpr (!std::is_class_v<T> || std::is_final_v<T>)                              \
      return false;                                                                       \
    else                                                                                  \
      return !requires { &member_probe_derived_##NAME<T>::NAME; };                        \
  }                                                                                       \
  template <class T>                                                                      \
  inline constexpr bool has_member_##NAME = has_member_##NAME##_impl<std::remove_cvref_t<T>>(); \
  }
