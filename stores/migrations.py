"""Numbered, append-only schema migrations for ``catalog.duckdb`` (llm's pattern, but each
migration and its record run in one transaction, as in sqlite-utils).

Never edit a migration that has shipped: add a new one. ``SCHEMA_VERSION`` is the number of
migrations; a store written by a newer version of the project is refused.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Callable

from .descriptions import apply_comments
from .errors import StoreVersionError

MIGRATIONS: list[Callable] = []
migration = MIGRATIONS.append


@migration
def m001_core(con) -> None:
    con.execute(
        """
        CREATE TABLE meta(key VARCHAR PRIMARY KEY, value VARCHAR);
        CREATE TABLE classes(
            class_id BIGINT PRIMARY KEY,
            name VARCHAR NOT NULL,        -- as given (with '_' turned into ' ')
            norm_name VARCHAR NOT NULL UNIQUE  -- lower-cased, whitespace-collapsed: the identity
        );
        CREATE TABLE attributes(
            attr_id BIGINT PRIMARY KEY,
            class_id BIGINT NOT NULL,
            text VARCHAR NOT NULL,        -- the descriptor as written ("a red crest")
            prompt VARCHAR NOT NULL,      -- the exact string that was encoded
            source VARCHAR NOT NULL,      -- file path, or llm:<model>
            style VARCHAR,                -- descriptors (DCLIP) | sentences (CuPL) | template
            prompt_version VARCHAR
        );
        CREATE TABLE attribute_embeddings(
            attr_id BIGINT NOT NULL,
            model VARCHAR NOT NULL,
            embedding FLOAT[] NOT NULL,   -- L2-normalised
            PRIMARY KEY (attr_id, model)
        );
        -- images and regions are views over Parquet shards (stores/catalog.py SHARD_TABLES)
        CREATE TABLE runs(
            run_id BIGINT PRIMARY KEY,
            method VARCHAR NOT NULL,
            params VARCHAR NOT NULL,      -- JSON: everything needed to reproduce the run
            model VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE predictions(
            run_id BIGINT NOT NULL,
            image_id BIGINT NOT NULL,
            class_id BIGINT NOT NULL,
            rank INTEGER NOT NULL,        -- 1 is the prediction
            score DOUBLE NOT NULL,
            global_score DOUBLE,          -- LaZSL: the DCLIP-on-full-image part
            local_score DOUBLE            -- LaZSL: sum of T*S over crops
        );
        CREATE TABLE alignments(
            run_id BIGINT NOT NULL,
            image_id BIGINT NOT NULL,
            class_id BIGINT NOT NULL,
            region_id BIGINT NOT NULL,
            attr_id BIGINT NOT NULL,
            mass DOUBLE NOT NULL,         -- transport plan entry T[region, attribute]
            similarity DOUBLE NOT NULL    -- fused similarity F = (1-theta) g + theta S
        );
        CREATE TABLE index_runs(
            index_run_id BIGINT PRIMARY KEY,
            params VARCHAR NOT NULL,      -- JSON: region source, crops, seed, model
            model VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL
        );
        """
    )


@migration
def m002_llm(con) -> None:
    """The LLM call log and the answer cache of ``build-attributes`` (pipeline.llm_attributes)."""
    con.execute(
        """
        CREATE TABLE llm_calls(
            id VARCHAR PRIMARY KEY,       -- ULID: sorts by creation time
            batch_id VARCHAR NOT NULL,    -- one build-attributes invocation
            created_at TIMESTAMP NOT NULL,
            model VARCHAR NOT NULL,       -- the --llm-model as sent
            base_url VARCHAR NOT NULL,    -- the server (no credentials)
            prompt_version VARCHAR NOT NULL,  -- pipeline/prompts/<version>.json
            style VARCHAR NOT NULL,       -- descriptors | sentences
            class_name VARCHAR NOT NULL,
            sample_index INTEGER NOT NULL,
            attempt INTEGER NOT NULL,     -- 1 = first ask; 2.. = re-asks after an unusable answer
            response_format VARCHAR,      -- json_schema | json_object | none
            request VARCHAR NOT NULL,     -- JSON body sent (never the API key or headers)
            response VARCHAR,             -- raw response body as received
            status VARCHAR NOT NULL,      -- ok | invalid | error
            error VARCHAR,                -- why invalid / the error
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_ms DOUBLE,            -- wall time of the call, client retries included
            retries INTEGER NOT NULL      -- HTTP retries the client made (429/5xx/timeouts)
        );
        CREATE TABLE llm_cache(
            model VARCHAR NOT NULL,
            base_url VARCHAR NOT NULL,
            prompt_version VARCHAR NOT NULL,
            style VARCHAR NOT NULL,
            norm_name VARCHAR NOT NULL,   -- the class, normalised as classes.norm_name
            sample_index INTEGER NOT NULL,
            class_name VARCHAR NOT NULL,
            status VARCHAR NOT NULL,      -- ok | failed (unusable after every re-ask)
            items VARCHAR NOT NULL,       -- JSON list of the validated texts ([] when failed)
            call_id VARCHAR,              -- llm_calls.id of the deciding call
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (model, base_url, prompt_version, style, norm_name, sample_index)
        );
        """
    )


@migration
def m003_image_errors(con) -> None:
    con.execute(
        """
        CREATE TABLE image_errors(
            path VARCHAR NOT NULL,
            sha256 VARCHAR,
            reason VARCHAR NOT NULL,
            index_run_id BIGINT,
            created_at TIMESTAMP NOT NULL
        );
        """
    )


@migration
def m004_explanation_views(con) -> None:
    """Views that answer "why": per-attribute contributions, rankings, confusions, dead descriptors."""
    con.execute(
        """
        CREATE VIEW contributions AS
        SELECT al.run_id, al.image_id, al.class_id, c.name AS class_name, al.attr_id, a.text AS attribute,
               sum(al.mass) AS mass,
               sum(al.mass * al.similarity) / nullif(sum(al.mass), 0) AS similarity,
               sum(al.mass * al.similarity) AS contribution
        FROM alignments al JOIN attributes a USING (attr_id) JOIN classes c ON c.class_id = al.class_id
        GROUP BY ALL;

        CREATE VIEW top_attributes AS
        SELECT *, row_number() OVER (PARTITION BY run_id, image_id, class_id ORDER BY contribution DESC, attr_id) AS attr_rank
        FROM contributions;

        CREATE VIEW class_confusions AS
        SELECT p.run_id, i.label, c.name AS predicted, count(*) AS n,
               lower(trim(regexp_replace(replace(i.label, '_', ' '), '\\s+', ' ', 'g'))) = c.norm_name AS correct
        FROM predictions p JOIN images i USING (image_id) JOIN classes c USING (class_id)
        WHERE p.rank = 1 AND i.label IS NOT NULL
        GROUP BY ALL;

        CREATE VIEW attribute_usage AS
        WITH used AS (
            SELECT run_id, attr_id, sum(mass) AS mass, sum(mass * similarity) AS contribution,
                   count(DISTINCT image_id) AS images
            FROM alignments WHERE mass > 0 GROUP BY ALL
        ),
        ot_runs AS (SELECT DISTINCT run_id FROM alignments)
        SELECT r.run_id, a.attr_id, c.name AS class_name, a.text AS attribute,
               coalesce(u.mass, 0) AS mass, coalesce(u.contribution, 0) AS contribution, coalesce(u.images, 0) AS images,
               u.attr_id IS NULL AS never_used
        FROM ot_runs r CROSS JOIN attributes a JOIN classes c USING (class_id)
        LEFT JOIN used u ON u.run_id = r.run_id AND u.attr_id = a.attr_id
        WHERE a.style = 'descriptors';
        """
    )


@migration
def m005_faithfulness(con) -> None:
    """Scores of the explanations themselves: deletion/insertion curves and the pointing game."""
    con.execute(
        """
        CREATE TABLE faithfulness_runs(
            faith_run_id BIGINT PRIMARY KEY,
            run_id BIGINT NOT NULL,       -- the classify run whose attribution maps are scored
            params VARCHAR NOT NULL,      -- JSON: steps, baseline, scorer, seed, boxes file, ...
            model VARCHAR,                -- the model that re-encoded the perturbed images
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE faithfulness_curves(
            faith_run_id BIGINT NOT NULL,
            run_id BIGINT NOT NULL,
            image_id BIGINT NOT NULL,
            class_id BIGINT NOT NULL,     -- the predicted class, whose map orders the pixels
            kind VARCHAR NOT NULL,        -- deletion | insertion | random_deletion | random_insertion
            step INTEGER NOT NULL,        -- 0 .. steps
            fraction DOUBLE NOT NULL,     -- share of pixels deleted / revealed
            score DOUBLE NOT NULL         -- the class's normalised score on the perturbed image
        );
        CREATE TABLE faithfulness_scores(
            faith_run_id BIGINT NOT NULL,
            run_id BIGINT NOT NULL,
            image_id BIGINT NOT NULL,
            class_id BIGINT NOT NULL,
            kind VARCHAR NOT NULL,
            auc DOUBLE NOT NULL           -- trapezoid area under the curve, fraction in [0, 1]
        );
        CREATE TABLE pointing_game(
            faith_run_id BIGINT NOT NULL,
            run_id BIGINT NOT NULL,
            image_id BIGINT NOT NULL,
            class_id BIGINT NOT NULL,
            attr_id BIGINT,               -- NULL: the class map was pointed, not an attribute's
            attribute VARCHAR,            -- the attribute text as given in the boxes file
            hit BOOLEAN NOT NULL,         -- the map's maximum lies in the ground-truth box
            energy_inside DOUBLE NOT NULL,-- SCH: share of the map's positive mass inside the box
            x DOUBLE, y DOUBLE,           -- where the maximum is (pixels)
            x0 DOUBLE, y0 DOUBLE, x1 DOUBLE, y1 DOUBLE  -- the ground-truth box
        );
        """
    )


@migration
def m006_model_record_and_class_prompts(con) -> None:
    """One model identity record per store; class-name templates apart from user attributes.

    Before: the model lived in two meta keys (``model``, ``model_spec``), and CLIP template
    prompts ("a photo of a {c}.") were rows of ``attributes`` told apart only by
    ``source LIKE 'template:%'``, so some readers mixed them into exports, prototypes and
    evaluate's ``templates``. They move to ``class_prompts`` with their embeddings.
    """
    con.execute(
        """
        CREATE TABLE store_model(
            fingerprint VARCHAR PRIMARY KEY,  -- name/tag or name/sha256:...: what every embedding is checked against
            name VARCHAR NOT NULL,            -- open_clip model name (ViT-B-32, zsl-tiny)
            pretrained VARCHAR NOT NULL,      -- the --pretrained given (openai, toy-clip, a file, random:0)
            embed_dim INTEGER,
            image_size INTEGER,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE class_prompts(
            prompt_id BIGINT PRIMARY KEY,
            class_id BIGINT NOT NULL,
            template_set VARCHAR NOT NULL,    -- clip ("a photo of a {}."), ensemble-openai, ensemble-simple, ...
            template VARCHAR,                 -- the template with {} (NULL for rows moved from older stores)
            prompt VARCHAR NOT NULL           -- the exact string that was encoded
        );
        CREATE TABLE class_prompt_embeddings(
            prompt_id BIGINT NOT NULL,
            model VARCHAR NOT NULL,
            embedding FLOAT[] NOT NULL,       -- L2-normalised
            PRIMARY KEY (prompt_id, model)
        );
        """
    )
    meta = dict(con.execute("SELECT key, value FROM meta WHERE key IN ('model', 'model_spec')").fetchall())
    if meta.get("model"):
        spec = json.loads(meta.get("model_spec") or "{}")
        name, _, tag = meta["model"].partition("/")
        con.execute(
            "INSERT INTO store_model (fingerprint, name, pretrained, created_at) VALUES (?, ?, ?, ?)",
            [meta["model"], spec.get("name", name), spec.get("pretrained", tag), datetime.now(timezone.utc)],
        )
    con.execute("DELETE FROM meta WHERE key IN ('model', 'model_spec')")
    con.execute(
        """
        INSERT INTO class_prompts (prompt_id, class_id, template_set, template, prompt)
        SELECT attr_id, class_id, substr(source, length('template:') + 1), NULL, prompt
        FROM attributes WHERE starts_with(source, 'template:');
        INSERT INTO class_prompt_embeddings (prompt_id, model, embedding)
        SELECT e.attr_id, e.model, e.embedding FROM attribute_embeddings e
        WHERE e.attr_id IN (SELECT prompt_id FROM class_prompts);
        DELETE FROM attribute_embeddings WHERE attr_id IN (SELECT prompt_id FROM class_prompts);
        DELETE FROM attributes WHERE starts_with(source, 'template:');
        """
    )


@migration
def m007_sample_predictions(con) -> None:
    """Methods that average random draws (WCA's 20 crop samples) keep each draw's top-1, so
    accuracy can be reported as upstream does: mean ± std over draws."""
    con.execute(
        """
        CREATE TABLE sample_predictions(
            run_id BIGINT NOT NULL,
            image_id BIGINT NOT NULL,
            sample INTEGER NOT NULL,      -- 0 .. n_runs-1
            class_id BIGINT NOT NULL      -- the top-1 class of that draw alone
        );
        """
    )


@migration
def m008_image_errors_key(con) -> None:
    """One row per (path, content, reason) in ``image_errors``: re-running index-images on the
    same broken files used to add the same rows again. Existing duplicates are folded into
    one row (the latest run and time); the key is a unique index, NULL sha256 (the file was
    never read: missing, too large, not a regular file) counting as one value."""
    con.execute(
        """
        CREATE TABLE image_errors_folded(
            path VARCHAR NOT NULL,
            sha256 VARCHAR,               -- NULL: the file was never read (missing, too large, not a file)
            reason VARCHAR NOT NULL,
            index_run_id BIGINT,          -- the latest run that saw it
            created_at TIMESTAMP NOT NULL -- when that run saw it
        );
        INSERT INTO image_errors_folded
        SELECT path, sha256, reason, max(index_run_id), max(created_at)
        FROM image_errors GROUP BY path, sha256, reason;
        DROP TABLE image_errors;
        ALTER TABLE image_errors_folded RENAME TO image_errors;
        CREATE UNIQUE INDEX image_errors_key ON image_errors (path, coalesce(sha256, ''), reason);
        """
    )


@migration
def m009_shard_records(con) -> None:
    """A record of every Parquet shard the store wrote: what it held and the bytes it was.

    ``stores.shards`` stages a shard pair under temporary names, inserts its two records in one
    transaction (the commit point), then renames the files. A file without a record is then an
    interrupted write (or something the store never wrote), and a record without its file is
    damage that ``pipeline verify`` reports; a lost shard is never "cleaned up" by deleting its
    partner. Stores written before this migration have shards without records:
    ``pipeline verify --repair`` records them.
    """
    con.execute(
        """
        CREATE TABLE shards(
            name VARCHAR NOT NULL,            -- file name, part-RUN-SEQ.parquet
            table_name VARCHAR NOT NULL,      -- images | regions (the folder and the view)
            rows BIGINT NOT NULL,             -- rows in the file
            bytes BIGINT NOT NULL,            -- file size
            sha256 VARCHAR NOT NULL,          -- of the file's bytes
            index_run_id BIGINT,              -- the index run that wrote its rows
            created_at TIMESTAMP NOT NULL,
            state VARCHAR NOT NULL,           -- live | retired (rewritten by remove-images) | quarantined | lost
            note VARCHAR,                     -- why a shard left the live set
            PRIMARY KEY (table_name, name)
        );
        """
    )


@migration
def m010_object_bindings(con) -> None:
    """The object-bound method's answer to "which object carried the class": per (run, image,
    candidate class), the region whose box framed the winning object and how many parts it had.
    Its plan (over that object's parts) is in ``alignments`` like LaZSL's."""
    con.execute(
        """
        CREATE TABLE object_bindings(
            run_id BIGINT NOT NULL,
            image_id BIGINT NOT NULL,
            class_id BIGINT NOT NULL,
            region_id BIGINT NOT NULL,    -- the winning object (a region; its box is in regions)
            n_parts INTEGER NOT NULL,     -- regions inside it (its parts)
            score DOUBLE NOT NULL         -- the object's score = the class's score
        );
        """
    )


@migration
def m011_compositional(con) -> None:
    """(state, object) pairs: a pair is a row of ``classes`` (name "state object"), so every
    reader of classes, predictions and alignments works on it unchanged; what makes it a pair
    lives beside it. A plain store keeps these tables empty and behaves as before."""
    con.execute(
        """
        CREATE TABLE czsl_vocab(
            vocab_id BIGINT PRIMARY KEY,
            kind VARCHAR NOT NULL,          -- state | object
            name VARCHAR NOT NULL,
            norm_name VARCHAR NOT NULL,     -- normalised as classes.norm_name
            UNIQUE (kind, norm_name)
        );
        CREATE TABLE czsl_pairs(
            class_id BIGINT PRIMARY KEY,    -- the pair's row in classes
            state_id BIGINT NOT NULL,       -- czsl_vocab.vocab_id
            object_id BIGINT NOT NULL,
            seen BOOLEAN,                   -- a training ("seen") pair; NULL when no --seen list was given
            open_only BOOLEAN NOT NULL      -- only in the open world (neither seen nor a test pair)
        );
        CREATE TABLE czsl_texts(
            text_id BIGINT PRIMARY KEY,
            vocab_id BIGINT NOT NULL,       -- the state or object the text describes
            style VARCHAR NOT NULL,         -- descriptors (DCLIP rule) | clip (the name prompt)
            text VARCHAR NOT NULL,          -- the descriptor as written ('' for the name prompt)
            prompt VARCHAR NOT NULL,        -- the exact string that was encoded
            source VARCHAR NOT NULL
        );
        CREATE TABLE czsl_text_embeddings(
            text_id BIGINT NOT NULL,
            model VARCHAR NOT NULL,
            embedding FLOAT[] NOT NULL,     -- L2-normalised
            PRIMARY KEY (text_id, model)
        );
        CREATE TABLE attribute_roles(
            attr_id BIGINT PRIMARY KEY,     -- an attribute of a pair class
            role VARCHAR NOT NULL           -- state | object | pair: what part of the pair it describes
        );
        CREATE TABLE pair_scores(
            run_id BIGINT NOT NULL,
            image_id BIGINT NOT NULL,
            class_id BIGINT NOT NULL,       -- the pair (every candidate pair of the run)
            pair_score DOUBLE NOT NULL,     -- pair branch, cosine units (CLIP / DCLIP / LaZSL score)
            state_score DOUBLE NOT NULL,    -- the pair's state in the state branch
            object_score DOUBLE NOT NULL,
            state_prob DOUBLE NOT NULL,     -- softmax over the states of t * state branch
            object_prob DOUBLE NOT NULL
        );
        CREATE TABLE pair_regions(
            run_id BIGINT NOT NULL,
            image_id BIGINT NOT NULL,
            class_id BIGINT NOT NULL,       -- the explained pair (the prediction)
            region_id BIGINT NOT NULL,
            state_weight DOUBLE NOT NULL,   -- share of the state evidence this region carried (sums to 1)
            object_weight DOUBLE NOT NULL
        );
        CREATE TABLE pair_feasibility(
            run_id BIGINT NOT NULL,         -- an open-world run with a feasibility threshold
            class_id BIGINT NOT NULL,
            score DOUBLE NOT NULL,          -- max(state_sim, object_sim)
            state_sim DOUBLE NOT NULL,      -- cos(pair name prompt, state name prompt)
            object_sim DOUBLE NOT NULL,
            removed BOOLEAN NOT NULL        -- left out of the run's candidates
        );
        CREATE VIEW pairs AS
        SELECT p.class_id, c.name, s.name AS state, o.name AS object, p.seen, p.open_only
        FROM czsl_pairs p JOIN classes c USING (class_id)
        JOIN czsl_vocab s ON s.vocab_id = p.state_id JOIN czsl_vocab o ON o.vocab_id = p.object_id;
        """
    )


@migration
def m012_mutual_knowledge(con) -> None:
    """Mutual-knowledge explanations (Sammani & Deligiannis, NeurIPS 2024) of a run's predictions:
    one row per explained prediction, and its vision and language concepts."""
    con.execute(
        """
        CREATE TABLE mutual_knowledge(
            run_id BIGINT NOT NULL,
            image_id BIGINT NOT NULL,
            class_id BIGINT NOT NULL,       -- the explained (predicted, rank 1) class
            n_vision INTEGER NOT NULL,
            n_language INTEGER NOT NULL,
            n_shared INTEGER NOT NULL,
            mi DOUBLE NOT NULL,             -- log N + log M + H(match table); 0 without overlap
            deletion_auc DOUBLE NOT NULL,   -- mean of deletion_curve (the paper's "AUC")
            deletion_curve DOUBLE[] NOT NULL,  -- MI after deleting the 0, 1, ..., N most relevant vision concepts
            n_parts INTEGER NOT NULL,       -- parts found in the image's patch tokens
            part_topk INTEGER NOT NULL,
            language_topk INTEGER NOT NULL,
            clustering VARCHAR NOT NULL,    -- ward | kmeans
            foreground BOOLEAN NOT NULL,    -- parts clustered from the foreground patches only
            part_embedding VARCHAR NOT NULL,  -- crop: each part's box crop encoded
            class_text VARCHAR NOT NULL,    -- name | run: which text embedding is the class's
            model VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (run_id, image_id)
        );
        CREATE TABLE concepts(
            run_id BIGINT NOT NULL,
            image_id BIGINT NOT NULL,
            class_id BIGINT NOT NULL,
            side VARCHAR NOT NULL,          -- vision | language
            concept VARCHAR NOT NULL,       -- the concept bank entry (an attribute text, no class name)
            rank INTEGER NOT NULL,          -- 1 = most relevant to the image (vision) / nearest the class (language)
            score DOUBLE NOT NULL,          -- vision: 2.5 cos(image, concept); language: cos(class text, concept)
            shared BOOLEAN NOT NULL,        -- the concept is on both sides
            part INTEGER,                   -- vision: the first part it describes (0-based); NULL for language
            x0 DOUBLE, y0 DOUBLE, x1 DOUBLE, y1 DOUBLE  -- that part's box (image pixels)
        );
        CREATE VIEW concept_sets AS
        SELECT run_id, image_id, class_id,
               list(concept ORDER BY rank) FILTER (WHERE side = 'vision') AS vision,
               list(concept ORDER BY rank) FILTER (WHERE side = 'vision' AND shared) AS shared,
               list(concept ORDER BY rank) FILTER (WHERE side = 'language') AS language
        FROM concepts GROUP BY ALL;
        """
    )


@migration
def m013_contrasts(con) -> None:
    """Contrastive reasons ("why A and not B"): a score gap split into per-attribute terms in
    which what both classes share cancels (``queries.contrast``; written by classify for OT runs)."""
    con.execute(
        """
        CREATE TABLE contrast_terms(
            run_id BIGINT NOT NULL,
            image_id BIGINT NOT NULL,
            class_id BIGINT NOT NULL,        -- A: the prediction (rank 1)
            other_class_id BIGINT NOT NULL,  -- B: the runner-up and/or the true class
            runner_up BOOLEAN NOT NULL,      -- B is rank 2
            true_class BOOLEAN NOT NULL,     -- B is the image's label (a wrong prediction)
            attr_id BIGINT,                  -- A's attribute; NULL: B's unpaired one, or the class-prompt row
            other_attr_id BIGINT,            -- B's paired attribute; NULL: A's unpaired one, or the prompt row
            shared BOOLEAN NOT NULL,         -- same descriptor text in both classes (term 0)
            term DOUBLE NOT NULL,            -- the terms of one (image, A, B) sum to gap
            reason_rank INTEGER,             -- 1 = the attribute that did most to put A above B; NULL: shared, prompt
            gap DOUBLE NOT NULL              -- score_A - score_B (from the stored plans)
        );
        CREATE VIEW contrasts AS
        SELECT t.run_id, t.image_id, t.class_id, ca.name AS class_name, t.other_class_id, cb.name AS other_class_name,
               t.runner_up, t.true_class, t.attr_id,
               CASE WHEN t.attr_id IS NULL AND t.other_attr_id IS NULL THEN '(class prompt)' ELSE a.text END AS attribute,
               t.other_attr_id, b.text AS other_attribute, t.shared, t.term, t.reason_rank, t.gap
        FROM contrast_terms t JOIN classes ca ON ca.class_id = t.class_id JOIN classes cb ON cb.class_id = t.other_class_id
        LEFT JOIN attributes a ON a.attr_id = t.attr_id LEFT JOIN attributes b ON b.attr_id = t.other_attr_id;
        """
    )


@migration
def m014_faithfulness_map_kinds(con) -> None:
    """``faithfulness --compare``: the map kind of each score, curve and pointing row (NULL = the
    run's own crop-box maps, as before), and one summary row per (map kind, metric) with the paired
    bootstrap interval of its difference to random maps."""
    con.execute(
        """
        ALTER TABLE faithfulness_curves ADD COLUMN map_kind VARCHAR;
        ALTER TABLE faithfulness_scores ADD COLUMN map_kind VARCHAR;
        ALTER TABLE pointing_game ADD COLUMN map_kind VARCHAR;
        CREATE TABLE faithfulness_summary(
            faith_run_id BIGINT NOT NULL,
            run_id BIGINT NOT NULL,
            map_kind VARCHAR NOT NULL,    -- plan-dense | crop-boxes | occlusion | random | gradcam | sim-plain | sim-sclip
            metric VARCHAR NOT NULL,      -- deletion (lower is better) | insertion | road | pointing (higher is better)
            images INTEGER NOT NULL,      -- images the mean is over
            value DOUBLE NOT NULL,        -- mean over those images
            random_value DOUBLE,          -- random maps' mean on the same images
            chance DOUBLE,                -- pointing: mean grown-box area / image area
            diff DOUBLE,                  -- mean of (value - random) over the same images
            diff_low DOUBLE,              -- paired bootstrap 95% interval of diff
            diff_high DOUBLE,
            better BOOLEAN,               -- the interval excludes 0 on the good side
            PRIMARY KEY (faith_run_id, map_kind, metric)
        );
        """
    )



@migration
def m015_catalog_descriptions(con) -> None:
    """A catalog that explains itself (issue 20).

    * (With it, :meth:`Catalog.refresh_views`:) a read-only connection shadowed the stored shard
      views ``images`` and ``regions`` with TEMP views, so ``SHOW TABLES`` listed both names
      twice; it now uses the stored view when that reads exactly the committed shards.
    * Every view over runs' results carries ``run_id`` and ``method``.
    * ``contributions.mass`` was 1/N in every row (LaZSL's uniform attribute marginal): it is
      replaced by ``share``, the attribute's share of the class's summed contributions.
    * ``attribute_usage`` says how often each descriptor was the prediction's strongest
      attribute (``top_in_predictions``, ``never_top``); ``never_used`` (no mass at all) is only
      true for classes that were never a candidate.
    * ``COMMENT ON`` every table, view and column (:mod:`stores.descriptions`).
    """
    con.execute(
        """
        CREATE OR REPLACE VIEW contributions AS
        WITH c AS (
            SELECT run_id, image_id, class_id, attr_id, sum(mass * similarity) / nullif(sum(mass), 0) AS similarity,
                   sum(mass * similarity) AS contribution
            FROM alignments GROUP BY ALL
        )
        SELECT c.run_id, r.method, c.image_id, c.class_id, k.name AS class_name, c.attr_id, a.text AS attribute,
               c.similarity, c.contribution,
               c.contribution / nullif(sum(c.contribution) OVER (PARTITION BY c.run_id, c.image_id, c.class_id), 0) AS share
        FROM c JOIN runs r USING (run_id) JOIN attributes a USING (attr_id) JOIN classes k ON k.class_id = c.class_id;

        CREATE OR REPLACE VIEW top_attributes AS
        SELECT *, row_number() OVER (PARTITION BY run_id, image_id, class_id ORDER BY contribution DESC, attr_id) AS attr_rank
        FROM contributions;

        CREATE OR REPLACE VIEW class_confusions AS
        SELECT p.run_id, r.method, i.label, c.name AS predicted, count(*) AS n,
               lower(trim(regexp_replace(replace(i.label, '_', ' '), '\\s+', ' ', 'g'))) = c.norm_name AS correct
        FROM predictions p JOIN runs r USING (run_id) JOIN images i USING (image_id) JOIN classes c USING (class_id)
        WHERE p.rank = 1 AND i.label IS NOT NULL
        GROUP BY ALL;

        CREATE OR REPLACE VIEW attribute_usage AS
        WITH c AS (
            SELECT run_id, image_id, class_id, attr_id, sum(mass * similarity) AS contribution
            FROM alignments WHERE mass > 0 GROUP BY ALL
        ),
        ranked AS (
            SELECT c.*, row_number() OVER (PARTITION BY run_id, image_id, class_id ORDER BY contribution DESC, attr_id) AS r
            FROM c
        ),
        used AS (
            SELECT k.run_id, k.attr_id, count(DISTINCT k.image_id) AS images, avg(k.contribution) AS mean_contribution,
                   count(DISTINCT k.image_id) FILTER (WHERE k.r = 1 AND p.rank = 1) AS top_in_predictions
            FROM ranked k LEFT JOIN predictions p USING (run_id, image_id, class_id)
            GROUP BY ALL
        ),
        ot_runs AS (SELECT DISTINCT run_id FROM alignments)
        SELECT o.run_id, r.method, a.attr_id, c.name AS class_name, a.text AS attribute,
               coalesce(u.images, 0) AS images, coalesce(u.mean_contribution, 0) AS mean_contribution,
               coalesce(u.top_in_predictions, 0) AS top_in_predictions,
               coalesce(u.top_in_predictions, 0) = 0 AS never_top, u.attr_id IS NULL AS never_used
        FROM ot_runs o JOIN runs r USING (run_id) CROSS JOIN attributes a JOIN classes c USING (class_id)
        LEFT JOIN used u ON u.run_id = o.run_id AND u.attr_id = a.attr_id
        WHERE a.style = 'descriptors';

        CREATE OR REPLACE VIEW contrasts AS
        SELECT t.run_id, r.method, t.image_id, t.class_id, ca.name AS class_name, t.other_class_id,
               cb.name AS other_class_name, t.runner_up, t.true_class, t.attr_id,
               CASE WHEN t.attr_id IS NULL AND t.other_attr_id IS NULL THEN '(class prompt)' ELSE a.text END AS attribute,
               t.other_attr_id, b.text AS other_attribute, t.shared, t.term, t.reason_rank, t.gap
        FROM contrast_terms t JOIN runs r USING (run_id)
        JOIN classes ca ON ca.class_id = t.class_id JOIN classes cb ON cb.class_id = t.other_class_id
        LEFT JOIN attributes a ON a.attr_id = t.attr_id LEFT JOIN attributes b ON b.attr_id = t.other_attr_id;
        """
    )
    # stored contrasts of earlier runs: rank every term, the class prompt's included (queries.contrast)
    con.execute(
        """
        UPDATE contrast_terms SET reason_rank = ranked.rk
        FROM (SELECT rowid AS rid, row_number() OVER (
                  PARTITION BY run_id, image_id, class_id, other_class_id
                  ORDER BY term DESC, (attr_id IS NULL AND other_attr_id IS NULL) DESC, rowid) AS rk
              FROM contrast_terms WHERE NOT shared) ranked
        WHERE contrast_terms.rowid = ranked.rid
        """
    )
    apply_comments(con)

SCHEMA_VERSION = len(MIGRATIONS)


def applied_migrations(con) -> list[str]:
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = '_migrations' AND table_schema = 'main'"
    ).fetchone()[0]
    if not exists:
        return []
    return [r[0] for r in con.execute("SELECT name FROM _migrations ORDER BY name").fetchall()]


def pending_migrations(con) -> list[Callable]:
    done = set(applied_migrations(con))
    return [m for m in MIGRATIONS if m.__name__ not in done]


def migrate(con) -> list[str]:
    """Apply pending migrations, each in its own transaction. Returns the names applied."""
    con.execute("CREATE TABLE IF NOT EXISTS _migrations(name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    known = {m.__name__ for m in MIGRATIONS}
    unknown = [n for n in applied_migrations(con) if n not in known]
    if unknown:
        raise StoreVersionError(
            f"This store was written by a newer version of the project (schema has {', '.join(unknown)}); "
            "upgrade the project (pip install -U) to open it."
        )
    applied = []
    for m in pending_migrations(con):
        con.execute("BEGIN TRANSACTION")
        try:
            m(con)
            con.execute("INSERT INTO _migrations VALUES (?, ?)", [m.__name__, datetime.now(timezone.utc)])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(m.__name__)
    return applied
