"""Every read and write the stages make, by name: with :mod:`stores.catalog` and
:mod:`stores.migrations`, the only code that knows table and column names.

The functions live in :mod:`stores.rows`, one module per section (a table or a family of
tables): ``common`` (insert by column name), ``texts`` (classes, attributes, class prompts,
ids), ``images`` (images, regions, image errors, index runs), ``runs`` (runs, predictions,
alignments, contrasts, rankings), ``llm``, ``faithfulness``, ``shard_records``,
``compositional`` and ``mutual_knowledge``. This module re-exports all of them, so callers
write ``from stores import tables; tables.insert_run(...)``.

Writers insert by **column name** (``INSERT INTO t (a, b) SELECT a, b FROM arrow``), so a
migration that adds a column never shifts a write. Readers return plain Python values or
numpy arrays shaped for what the stages do with them. ``docs/architecture.md`` lists which
stage calls which writer.
"""
from __future__ import annotations

from .rows.common import (  # noqa: F401
    fetch_dicts,
    insert_arrow,
    insert_columns,
)
from .rows.compositional import (  # noqa: F401
    attribute_roles,
    class_attributes,
    czsl_pair,
    czsl_pair_rows,
    czsl_text_keys,
    czsl_text_matrix,
    czsl_texts_without_embedding,
    czsl_vocab,
    czsl_vocab_ids,
    insert_attribute_roles,
    insert_czsl_text_embeddings,
    insert_czsl_texts,
    insert_czsl_vocab,
    insert_pair_feasibility,
    insert_pair_regions,
    insert_pair_scores,
    next_czsl_text_id,
    next_vocab_id,
    pair_feasibility_rows,
    pair_region_weights,
    pair_score,
    score_matrix,
    upsert_czsl_pairs,
)
from .rows.faithfulness import (  # noqa: F401
    FaithfulnessRows,
    faithfulness_summary_rows,
    insert_faithfulness,
    latest_faithfulness,
    map_kind_summary,
    next_faithfulness_run_id,
)
from .rows.images import (  # noqa: F401
    IMAGE_SHARD_SCHEMA,
    IMAGES_PER_ROW_GROUP_KEY,
    REGION_BATCH_COLUMNS,
    RegionBatch,
    clear_image_errors,
    find_images,
    full_view_embeddings,
    image_count,
    image_regions,
    index_run_params,
    insert_image_error,
    insert_index_run,
    iter_region_batches,
    known_image_hashes,
    labels_by_hash,
    next_index_run_id,
    read_region_rows,
    region_batches_of,
    region_count,
    region_shard_plan,
)
from .rows.llm import (  # noqa: F401
    LLM_CACHE_SCHEMA,
    LLM_CALL_SCHEMA,
    llm_cache_items,
    llm_cache_status,
    llm_failure_reasons,
    write_llm_jobs,
)
from .rows.mutual_knowledge import (  # noqa: F401
    concept_rows,
    distinct_attribute_texts,
    latest_run_with_mutual_knowledge,
    mutual_knowledge_images,
    mutual_knowledge_row,
    replace_mutual_knowledge,
)
from .rows.runs import (  # noqa: F401
    RUN_COLUMNS,
    RunRecord,
    alignment_rows,
    attribute_text_embeddings,
    class_contributions,
    contrast_rows,
    get_run,
    image_predictions,
    insert_alignments,
    insert_contrast_terms,
    insert_object_bindings,
    insert_predictions,
    insert_run,
    insert_sample_predictions,
    latest_run,
    latest_runs_by_method,
    never_used_attributes,
    next_run_id,
    object_binding,
    ranked_classes,
    run_has_alignments,
    run_image_ids,
    run_record,
    sample_top1,
    top1_images,
    top1_with_alignments,
    top_attributes,
    top_two_with_labels,
)
from .rows.shard_records import (  # noqa: F401
    IMAGE_RESULT_TABLES,
    SHARD_RECORD_SCHEMA,
    image_result_counts,
    insert_shard_records,
    set_shard_state,
    shard_records,
)
from .rows.texts import (  # noqa: F401
    TextMatrix,
    attribute_count,
    attribute_embedding_counts,
    attribute_key_counts,
    attribute_keys,
    attribute_matrix,
    attribute_styles,
    attribute_texts,
    attributes_by_class,
    attributes_without_embedding,
    class_count,
    class_ids_by_norm,
    class_names,
    class_prompt_keys,
    class_prompt_matrix,
    class_prompt_texts,
    class_prompts_without_embedding,
    find_attribute,
    insert_attribute_embeddings,
    insert_attributes,
    insert_class_prompt_embeddings,
    insert_class_prompts,
    insert_classes,
    next_attr_id,
    next_class_id,
    next_prompt_id,
    text_matrix_of,
    texts_by_ids,
)
