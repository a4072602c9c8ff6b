/* SPDX-License-Identifier: MIT */
/*
 * check_main.c - the one Check runner for every libeevp suite.
 *
 * Check's environment variables apply: CK_VERBOSITY (silent, minimal,
 * normal, verbose), CK_FORK (no: run in-process, for debuggers),
 * CK_RUN_SUITE / CK_RUN_CASE / CK_INCLUDE_TAGS to select, CK_DEFAULT_TIMEOUT
 * and CK_TIMEOUT_MULTIPLIER (sanitizer builds).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

Suite *make_contract_suite(void);
Suite *make_kernels_suite(void);
Suite *make_oom_suite(void);
extern Suite *make_step_suite(void);
extern Suite *make_criteria_suite(void);
Suite *make_dot_suite(void);
Suite *make_hostile_suite(void);
Suite *make_batch_suite(void);
Suite *make_policies_suite(void);
Suite *make_spec_suite(void);
Suite *make_corners_suite(void);
Suite *make_shard_suite(void);

int main(void)
{
    SRunner *sr = srunner_create(make_contract_suite());
    int n_run, n_failed;

    srunner_add_suite(sr, make_kernels_suite());
    srunner_add_suite(sr, make_oom_suite());
    srunner_add_suite(sr, make_step_suite());
    srunner_add_suite(sr, make_criteria_suite());
    srunner_add_suite(sr, make_dot_suite());
    srunner_add_suite(sr, make_hostile_suite());
    srunner_add_suite(sr, make_batch_suite());
    srunner_add_suite(sr, make_policies_suite());
    srunner_add_suite(sr, make_spec_suite());
    srunner_add_suite(sr, make_corners_suite());
    srunner_add_suite(sr, make_shard_suite());

    srunner_run_all(sr, CK_ENV); /* prints "N%: Checks: X, Failures: Y, Errors: Z" */
    n_run = srunner_ntests_run(sr);
    n_failed = srunner_ntests_failed(sr);
    srunner_free(sr);

    printf("%d passed, %d failed\n", n_run - n_failed, n_failed);
    fflush(stdout);
    return n_failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
