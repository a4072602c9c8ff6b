/* SPDX-License-Identifier: MIT */
/*
 * doc_harness.h - what every C harness of tests/docs/ shares.
 *
 * tests/docs/check_docs.py writes a fragment of the docs to doc_fragment.h
 * (and its leading #include lines, or what comes before a line
 * "/" "* ... *" "/", to doc_fragment_top.h), each opening with a #line
 * directive, so that the compiler's messages name the doc and its lines.
 * A harness includes them where the fragment belongs; a section of a
 * harness (harness=NAME:SECTION) is compiled with -DDOC_SECTION_SECTION.
 * A `{ ... }` of a fragment (error handling left out of the doc) becomes
 * `{ DOC_ELIDED(); }`: reaching it fails the test.
 */
#ifndef DOC_HARNESS_H
#define DOC_HARNESS_H

#include <eevp.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DOC_ELIDED() \
    (fprintf(stderr, "%s:%d: the elided error branch { ... } was taken\n", __FILE__, \
             __LINE__), exit(1))

#define DOC_CHECK(cond) \
    do { \
        if (!(cond)) { \
            fprintf(stderr, "%s:%d: harness check failed: %s\n", __FILE__, __LINE__, #cond); \
            exit(1); \
        } \
    } while (0)

#endif
