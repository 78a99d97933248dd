// Which sanitizer a test binary is built with. GCC defines __SANITIZE_ADDRESS__ and
// __SANITIZE_THREAD__; clang 14 defines neither and answers __has_feature instead.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define KEEL_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KEEL_TEST_TSAN 1
#endif
#endif

#if defined(__SANITIZE_ADDRESS__)
#define KEEL_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KEEL_TEST_ASAN 1
#endif
#endif
