"""What every table, view and column of the catalog means: the text of its DuckDB comments.

Migration m015 writes them with ``COMMENT ON`` (and re-writes them after later migrations);
the shard views ``images`` and ``regions``, re-created whenever shards change, get theirs from
:func:`comment_statements` each time. ``pipeline sql --tables`` and ``--describe NAME`` show
them (``duckdb_tables()``, ``duckdb_views()``, ``duckdb_columns()`` hold them for any client).

A column's text is looked up as ``COLUMNS[(table, column)]``, else ``COLUMNS[column]`` (the
same name means the same thing everywhere it appears).
"""
from __future__ import annotations

TABLES = {
    "_migrations": "Schema migrations applied to this catalog, in order.",
    "alignments": "The OT plan of each (run, image, class): how much mass each region sent to each attribute, and their fused similarity.",
    "attribute_embeddings": "Text embedding of each attribute's prompt, per model.",
    "attribute_roles": "Compositional runs: whether an attribute text describes a state or an object.",
    "attribute_usage": "Per run and descriptor: on how many images it carried mass, its mean contribution, and how often it was the prediction's strongest attribute.",
    "attributes": "The descriptors (or sentences) of each class, as the user gave them, with the prompt that was encoded.",
    "class_confusions": "Per run and method: how many labelled images of each label got each top-1 prediction.",
    "class_prompt_embeddings": "Text embedding of each class prompt, per model.",
    "class_prompts": "Class-name prompts (CLIP templates, WaffleCLIP and name-free prompts), kept apart from the descriptors.",
    "classes": "The candidate classes.",
    "concept_sets": "Mutual-knowledge explanations: the vision, shared and language concept lists of each (run, image, class).",
    "concepts": "Mutual-knowledge concepts of each (run, image, class), one row per concept and side.",
    "contrast_terms": "Why A and not B: each (run, image, A, B) score gap split into signed terms (attribute pairs and one class-prompt row) that sum to the gap.",
    "contrasts": "contrast_terms with class names, attribute texts and the run's method; reason_rank 1 is what tipped the decision.",
    "contributions": "Per (run, image, class, attribute): the attribute's contribution to the class's score and its share of it.",
    "czsl_pairs": "Compositional classes: the (state, object) pair of each class.",
    "czsl_text_embeddings": "Text embedding of each compositional text, per model.",
    "czsl_texts": "Compositional texts (state and object prompts, descriptors).",
    "czsl_vocab": "The states and objects of the compositional vocabulary.",
    "faithfulness_curves": "Deletion/insertion curves of each faithfulness run: the class probability after each step, per image and map kind.",
    "faithfulness_runs": "One row per `pipeline faithfulness` run: the classify run measured and every parameter used.",
    "faithfulness_scores": "Per faithfulness run, image and map kind: deletion/insertion AUC and ROAD values.",
    "faithfulness_summary": "Per faithfulness run, map kind and metric: the mean, the same-kind random maps' mean, and the paired 95% bootstrap interval of the difference.",
    "image_errors": "Files index-images could not read, and why.",
    "images": "The indexed images (a view over the Parquet image shards).",
    "index_runs": "One row per index-images run and its parameters.",
    "llm_cache": "Cached LLM answers (descriptor lists) by request key.",
    "llm_calls": "Every LLM request made, with its response, status and cost.",
    "meta": "Catalog settings as key/value pairs (schema version and similar).",
    "mutual_knowledge": "Per (run, image, class): the mutual-knowledge summary (concept counts, mutual information, deletion curve).",
    "object_bindings": "Object-bound runs: the object region that carried each (image, class).",
    "pair_feasibility": "Compositional runs: the feasibility score of each pair, and whether it was removed.",
    "pair_regions": "Compositional runs: how much each region carried the state and the object of a pair.",
    "pair_scores": "Compositional runs: pair, state and object scores per (image, class).",
    "pairs": "Compositional classes with their state and object names.",
    "pointing_game": "Pointing-game rows: per ground-truth box and map kind, whether the map's maximum fell inside it.",
    "predictions": "The ranked candidate classes of each (run, image) with the score and its global and local parts.",
    "regions": "The crops, parts or patches of each image with their embeddings (a view over the Parquet region shards).",
    "runs": "One row per classify run: method, all parameters, model.",
    "sample_predictions": "Methods that draw random descriptor samples (WCA): the top-1 class of each draw.",
    "shards": "The record of every Parquet shard: table, rows, bytes, checksum, state.",
    "store_model": "The one model this store's embeddings come from.",
    "top_attributes": "contributions ranked within each (run, image, class): attr_rank 1 is the largest contribution.",
}

COLUMNS = {
    # ids and keys: the same name means the same thing everywhere
    "run_id": "The classify run (runs.run_id).",
    "method": "The run's method (runs.method), e.g. lazsl.",
    "image_id": "The image (images.image_id).",
    "class_id": "The class (classes.class_id); in contrasts A, the prediction.",
    "attr_id": "The attribute (attributes.attr_id).",
    "region_id": "The region (regions.region_id).",
    "faith_run_id": "The faithfulness run (faithfulness_runs.faith_run_id).",
    "index_run_id": "The index-images run that wrote it (index_runs.index_run_id).",
    "prompt_id": "The class prompt (class_prompts.prompt_id).",
    "text_id": "The compositional text (czsl_texts.text_id).",
    "vocab_id": "The state or object (czsl_vocab.vocab_id).",
    "state_id": "The pair's state (czsl_vocab.vocab_id).",
    "object_id": "The pair's object (czsl_vocab.vocab_id).",
    "other_class_id": "B: the class the prediction is contrasted with (runner-up and/or true class).",
    "other_attr_id": "B's attribute paired with A's; NULL for A's unpaired attribute and for the class-prompt row.",
    "model": "Model fingerprint (store_model.fingerprint) the embedding or result comes from.",
    "created_at": "When the row was written (UTC).",
    "embedding": "L2-normalised embedding vector.",
    "params": "Every parameter of the run, as JSON.",
    "sha256": "SHA-256 of the file's bytes.",
    "name": "Name.",
    "norm_name": "Normalised name (lower case, single spaces) used to match labels.",
    "class_name": "The class's name.",
    "attribute": "The attribute's text (descriptor without the class name).",
    "label": "The image's label (folder name or manifest), NULL if unlabelled.",
    "path": "Absolute path of the image file.",
    "kind": "Kind of the row (see the table's description).",
    "map_kind": "Attribution-map kind (pipeline.explain.map_kinds): plan-dense, crop-boxes, occlusion, gradcam, sim-plain, sim-sclip, or a random-* baseline; NULL: crop-boxes of older runs.",
    "x0": "Left edge, pixels of the original image.",
    "y0": "Top edge, pixels of the original image.",
    "x1": "Right edge (exclusive), pixels of the original image.",
    "y1": "Bottom edge (exclusive), pixels of the original image.",
    "score": "Score (see the table's description).",
    "rank": "Rank, 1 = highest score.",
    "mass": "Transport mass carried.",
    "similarity": "Mass-weighted mean fused similarity (cosine).",
    "contribution": "Σ mass·similarity: what the attribute added to the class's score.",
    "share": "contribution / the class's summed contributions: the attribute's share of the score.",
    "shared": "Same descriptor text in both classes (or both sides).",
    "images": "Number of images.",
    "text": "The text as given.",
    "prompt": "The full prompt that was encoded.",
    "prompt_version": "Version of the prompt template.",
    "source": "Where it came from (file, LLM, template).",
    "style": "descriptors or sentences.",
    "seen": "Pair seen in training (compositional splits).",
    "open_only": "Pair only in the open-world candidate set.",
    "value": "The value.",
    "status": "Outcome status.",
    "n_parts": "Number of part regions.",
    "state": "State name.",
    "object": "Object name.",
    "base_url": "LLM endpoint URL.",
    "sample_index": "Which sample of repeated LLM requests.",
    "term": "Signed term of the score gap: > 0 argues for A (the prediction), < 0 for B.",
    "reason_rank": "Rank of the term among all terms of the gap, the class prompt's included, by signed push toward A: 1 = what tipped the decision; NULL for shared rows (term 0).",
    "gap": "score_A − score_B; the terms of one (image, A, B) sum to it.",
    "runner_up": "B is the runner-up (rank 2).",
    "true_class": "B is the image's true class (the prediction was wrong).",
    # per-table meanings
    ("_migrations", "name"): "Migration function name (mNNN_...).",
    ("_migrations", "applied_at"): "When it was applied.",
    ("alignments", "mass"): "Transport mass the region sent to the attribute (the class's plan sums to 1).",
    ("alignments", "similarity"): "Fused similarity F = (1-θ)·global + θ·region cosine of the pair.",
    ("attribute_roles", "role"): "state or object.",
    ("attribute_usage", "images"): "Images on which the descriptor carried mass in the run.",
    ("attribute_usage", "mean_contribution"): "Mean contribution per (image, class) where it carried mass.",
    ("attribute_usage", "top_in_predictions"): "Images on which it was the prediction's largest contribution (attr_rank 1).",
    ("attribute_usage", "never_used"): "Carried no mass in the run (its class was never a candidate).",
    ("attribute_usage", "never_top"): "Never the strongest attribute of a prediction: a candidate to drop or reword.",
    ("attributes", "text"): "The descriptor as given (without the class name).",
    ("attributes", "prompt"): "The encoded prompt (class name + descriptor).",
    ("class_confusions", "label"): "The true label.",
    ("class_confusions", "predicted"): "The top-1 class.",
    ("class_confusions", "n"): "Images with this label and this prediction.",
    ("class_confusions", "correct"): "The prediction matches the label.",
    ("class_prompts", "template_set"): "Which template family (clip, waffle, name-free...).",
    ("class_prompts", "template"): "The template with {} for the class name.",
    ("concept_sets", "vision"): "Concepts found only in the image.",
    ("concept_sets", "shared"): "Concepts both the image and the text carry.",
    ("concept_sets", "language"): "Concepts found only in the text.",
    ("concepts", "side"): "vision, shared or language.",
    ("concepts", "concept"): "The concept's text.",
    ("concepts", "score"): "The concept's score on its side.",
    ("concepts", "part"): "The image part the concept was found in.",
    ("concepts", "shared"): "The concept is on both sides.",
    ("contrasts", "class_name"): "A: the predicted class.",
    ("contrasts", "other_class_name"): "B: the contrasted class.",
    ("contrasts", "attribute"): "A's attribute, or '(class prompt)' for the class-name term.",
    ("contrasts", "other_attribute"): "B's paired attribute.",
    ("contrast_terms", "attr_id"): "A's attribute; NULL for B's unpaired attribute and for the class-prompt row.",
    ("contributions", "mass"): "Transport mass the attribute received (1/N by LaZSL's uniform marginal: the same for every attribute).",
    ("czsl_vocab", "kind"): "state or object.",
    ("faithfulness_curves", "kind"): "deletion or insertion (random_* rows: the random baseline of older runs).",
    ("faithfulness_curves", "step"): "Step number, 0 = unperturbed.",
    ("faithfulness_curves", "fraction"): "Fraction of pixels deleted or inserted at this step.",
    ("faithfulness_curves", "score"): "The class's probability on the perturbed image (the scorer in faithfulness_runs.params).",
    ("faithfulness_scores", "kind"): "Metric: deletion, insertion (AUC), road_morf, road_lerf, road.",
    ("faithfulness_scores", "auc"): "The metric's value (AUC for deletion/insertion).",
    ("faithfulness_summary", "metric"): "deletion (lower is better), insertion, road, pointing (higher is better).",
    ("faithfulness_summary", "images"): "Images the mean is over.",
    ("faithfulness_summary", "value"): "Mean over those images.",
    ("faithfulness_summary", "random_value"): "Mean of the random maps of the same kind on the same images.",
    ("faithfulness_summary", "chance"): "Pointing: mean grown-box area / image area.",
    ("faithfulness_summary", "diff"): "Mean of (value − random) over the same images.",
    ("faithfulness_summary", "diff_low"): "Paired bootstrap 95% interval of diff, low end.",
    ("faithfulness_summary", "diff_high"): "Paired bootstrap 95% interval of diff, high end.",
    ("faithfulness_summary", "better"): "The interval excludes 0 on the good side.",
    ("image_errors", "path"): "The file that failed.",
    ("image_errors", "reason"): "Why it could not be indexed.",
    ("images", "width"): "Width in pixels (after EXIF rotation).",
    ("images", "height"): "Height in pixels (after EXIF rotation).",
    ("llm_cache", "items"): "The parsed answer (descriptor list).",
    ("llm_cache", "call_id"): "The llm_calls row that produced it.",
    ("llm_calls", "id"): "Request id.",
    ("llm_calls", "batch_id"): "The batch the request belonged to.",
    ("llm_calls", "attempt"): "Attempt number (retries).",
    ("llm_calls", "response_format"): "Requested response format.",
    ("llm_calls", "request"): "The request body (secrets redacted).",
    ("llm_calls", "response"): "The response body.",
    ("llm_calls", "error"): "Error message, if any.",
    ("llm_calls", "prompt_tokens"): "Prompt tokens billed.",
    ("llm_calls", "completion_tokens"): "Completion tokens billed.",
    ("llm_calls", "latency_ms"): "Round-trip time in milliseconds.",
    ("llm_calls", "retries"): "Retries before this outcome.",
    ("meta", "key"): "Setting name.",
    ("meta", "value"): "Setting value.",
    ("mutual_knowledge", "n_vision"): "Number of vision-only concepts.",
    ("mutual_knowledge", "n_language"): "Number of language-only concepts.",
    ("mutual_knowledge", "n_shared"): "Number of shared concepts.",
    ("mutual_knowledge", "mi"): "Mutual information between the image's and the text's concepts.",
    ("mutual_knowledge", "deletion_auc"): "AUC of the score as shared concepts are removed.",
    ("mutual_knowledge", "deletion_curve"): "The score after each removal.",
    ("mutual_knowledge", "part_topk"): "Concepts kept per image part.",
    ("mutual_knowledge", "language_topk"): "Concepts kept from the text.",
    ("mutual_knowledge", "clustering"): "How image parts were clustered.",
    ("mutual_knowledge", "foreground"): "How the foreground was chosen.",
    ("mutual_knowledge", "part_embedding"): "How parts were embedded.",
    ("mutual_knowledge", "class_text"): "The class text compared with.",
    ("object_bindings", "score"): "The class's score from this object.",
    ("pair_feasibility", "score"): "Feasibility of the pair.",
    ("pair_feasibility", "state_sim"): "Similarity of the state to the object's seen states.",
    ("pair_feasibility", "object_sim"): "Similarity of the object to the state's seen objects.",
    ("pair_feasibility", "removed"): "Pruned as infeasible.",
    ("pair_regions", "state_weight"): "How much the region carried the state.",
    ("pair_regions", "object_weight"): "How much the region carried the object.",
    ("pair_scores", "pair_score"): "The pair's score.",
    ("pair_scores", "state_score"): "The state branch's score.",
    ("pair_scores", "object_score"): "The object branch's score.",
    ("pair_scores", "state_prob"): "The state branch's probability.",
    ("pair_scores", "object_prob"): "The object branch's probability.",
    ("pointing_game", "attribute"): "The attribute text of the box.",
    ("pointing_game", "hit"): "The map's maximum lies inside the (grown) box.",
    ("pointing_game", "energy_inside"): "Share of the map's positive mass inside the box.",
    ("pointing_game", "x"): "Column of the map's maximum, original pixels.",
    ("pointing_game", "y"): "Row of the map's maximum, original pixels.",
    ("predictions", "score"): "The method's score for the class.",
    ("predictions", "global_score"): "The full image's score part (DCLIP-style), where the method has one.",
    ("predictions", "local_score"): "The regions' score part (Σ T·S), where the method has one.",
    ("regions", "kind"): "full, crop, part or patch.",
    ("runs", "method"): "The classification method.",
    ("sample_predictions", "sample"): "The random draw's number.",
    ("sample_predictions", "class_id"): "The draw's top-1 class.",
    ("shards", "name"): "The shard's file name.",
    ("shards", "table_name"): "images or regions.",
    ("shards", "rows"): "Rows in the shard.",
    ("shards", "bytes"): "File size in bytes.",
    ("shards", "state"): "live, pending or removed.",
    ("shards", "note"): "Why the shard is in its state.",
    ("store_model", "fingerprint"): "The model fingerprint every embedding of the store carries.",
    ("store_model", "name"): "open_clip architecture name.",
    ("store_model", "pretrained"): "The weights' name or file.",
    ("store_model", "embed_dim"): "Embedding dimension.",
    ("store_model", "image_size"): "Input resolution in pixels.",
    ("top_attributes", "attr_rank"): "Rank of the attribute's contribution within its (run, image, class), 1 = largest.",
}


def describe(table: str, column: str | None = None) -> str | None:
    """The description of a table (or view), or of one of its columns; None if none is written."""
    if column is None:
        return TABLES.get(table)
    return COLUMNS.get((table, column)) or COLUMNS.get(column)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def comment_statements(con, names=None) -> list[str]:
    """``COMMENT ON`` statements for every described table/view (or only ``names``) and column in
    ``con``'s main schema. Objects without a description get none (a test asserts there are none)."""
    rows = con.execute(
        "SELECT t.table_name, t.table_type, c.column_name FROM information_schema.tables t "
        "JOIN information_schema.columns c USING (table_catalog, table_schema, table_name) "
        "WHERE t.table_schema = 'main' ORDER BY t.table_name, c.ordinal_position").fetchall()
    out, seen = [], set()
    for table, ttype, column in rows:
        if names is not None and table not in names:
            continue
        what = "VIEW" if ttype == "VIEW" else "TABLE"
        if table not in seen:
            seen.add(table)
            if describe(table):
                out.append(f"COMMENT ON {what} {table} IS {_quote(describe(table))}")
        text = describe(table, column)
        if text:
            out.append(f"COMMENT ON COLUMN {table}.{column} IS {_quote(text)}")
    return out


def apply_comments(con, names=None) -> None:
    for stmt in comment_statements(con, names):
        con.execute(stmt)


def catalog_listing(con) -> list[dict]:
    """Every table and view once (a TEMP shard view shadows nothing now): name, kind, rows-free
    summary of its columns, and its description."""
    rows = con.execute(
        """
        SELECT table_name AS name, 'table' AS kind, comment, column_count AS columns FROM duckdb_tables()
        WHERE NOT internal AND table_name NOT LIKE '\\_%' ESCAPE '\\'
        UNION ALL
        SELECT v.view_name, 'view', v.comment, (SELECT count(*) FROM duckdb_columns() c
                                                 WHERE c.table_name = v.view_name AND c.database_name = v.database_name)
        FROM duckdb_views() v WHERE NOT v.internal
        ORDER BY kind, name
        """).fetchall()
    seen, out = set(), []
    for name, kind, comment, n in rows:
        if name not in seen:
            seen.add(name)
            out.append(dict(name=name, kind=kind, columns=int(n), description=comment or describe(name) or ""))
    return out


def table_columns(con, name: str) -> list[dict] | None:
    """The columns of one table or view (name, type, description) in order, or None if there is none."""
    rows = con.execute(
        "SELECT column_name, data_type, comment, database_name FROM duckdb_columns() WHERE table_name = ? "
        "ORDER BY database_name = 'temp' DESC, column_index", [name]).fetchall()
    if not rows:
        return None
    first_db = rows[0][3]
    return [dict(column=c, type=t, description=comment or describe(name, c) or "")
            for c, t, comment, db in rows if db == first_db]
