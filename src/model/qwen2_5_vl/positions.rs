//! Qwen2.5-VL's multi-axis rotary positions (M-RoPE): every token has a temporal, a
//! height and a width position. Text tokens sit at the same position on all three
//! (which is the 1-D rotary, so text needs only [T] positions); a video's merged patch
//! at row h, column w of temporal patch i sits at `(s + ⌊i · step⌋, s + h, s + w)`, s
//! where the video starts and `step = tokens_per_second · seconds per temporal patch`,
//! computed in fp32 and truncated as `get_vision_position_ids` does.
//!
//! After a video, text continues at `s + max(rows, cols)` (`transformers` 5's
//! `get_rope_index`; the original Qwen code continued after the largest position, the
//! temporal one for long videos: this follows `transformers`, the parity reference),
//! and generated tokens start one past the largest position of the prompt on any axis
//! (the rope deltas `generate` applies).
//!
//! Streaming places blocks with the same rule, the i-th block of a context (sinks
//! first, then retrieved blocks and the window in temporal order) at temporal index i:
//! temporal positions are re-based contiguously after the sinks rather than kept at
//! the stream's absolute time, so they stay within what the model was trained on
//! however long the stream runs, and a context holding a whole video from its first
//! frame is placed exactly as `transformers` places that video.

use tch::{Device, Tensor};

use crate::error::ModelResult;
use crate::model::family::{Cursor, Positions};

/// The temporal step between consecutive temporal patches, as `transformers` computes
/// `tokens_per_second * second_per_grid_ts` (both fp32).
pub fn temporal_step(tokens_per_second: f64, seconds_per_patch: f64) -> f32 {
    tokens_per_second as f32 * seconds_per_patch as f32
}

/// Appends the positions of one temporal patch's merged grid (`rows` × `cols`, row by
/// row) at temporal index `index` of a video starting at `start` to the three axes.
fn push_patch(
    axes: &mut [Vec<i64>; 3],
    start: i64,
    index: i64,
    step: f32,
    (rows, cols): (i64, i64),
) {
    let temporal = start + (index as f32 * step) as i64;
    for h in 0..rows {
        for w in 0..cols {
            axes[0].push(temporal);
            axes[1].push(start + h);
            axes[2].push(start + w);
        }
    }
}

fn tensor(axes: [Vec<i64>; 3], device: Device) -> ModelResult<Positions> {
    let t = axes[0].len() as i64;
    let flat: Vec<i64> = axes.concat();
    Ok(Positions::from_tensor(
        Tensor::from_slice(&flat)
            .f_view([3, t])?
            .f_to_device(device)?,
    ))
}

/// Positions [3, T] of a one-shot prompt whose video tokens (`video_token`) form one
/// run of `patches` temporal patches of `grid` merged patches each, and the position of
/// the first generated token.
pub fn prompt_positions(
    ids: &[i64],
    video_token: i64,
    patches: i64,
    grid: (i64, i64),
    step: f32,
    device: Device,
) -> ModelResult<(Positions, i64)> {
    let mut axes: [Vec<i64>; 3] = Default::default();
    let mut next = 0;
    let mut i = 0;
    while i < ids.len() {
        if ids[i] == video_token {
            let start = next;
            for index in 0..patches {
                push_patch(&mut axes, start, index, step, grid);
            }
            i += (patches * grid.0 * grid.1) as usize;
            next = start + grid.0.max(grid.1);
        } else {
            for axis in &mut axes {
                axis.push(next);
            }
            next += 1;
            i += 1;
        }
    }
    let end = axes.iter().flatten().max().map_or(0, |m| m + 1);
    Ok((tensor(axes, device)?, end))
}

/// Positions [3, T] of `blocks` temporal patches of `grid` each placed at `cursor`,
/// which moves past them (see the module doc).
pub fn block_positions(
    cursor: &mut Cursor,
    blocks: usize,
    grid: (i64, i64),
    step: f32,
    device: Device,
) -> ModelResult<Positions> {
    let start = *cursor.video_start.get_or_insert(cursor.next);
    let mut axes: [Vec<i64>; 3] = Default::default();
    for _ in 0..blocks {
        push_patch(&mut axes, start, cursor.blocks, step, grid);
        cursor.blocks += 1;
    }
    if let Some(max) = axes.iter().flatten().max() {
        cursor.end = cursor.end.max(max + 1);
    }
    cursor.next = start + grid.0.max(grid.1);
    cursor.end = cursor.end.max(cursor.next);
    tensor(axes, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axes(p: &Positions) -> Vec<Vec<i64>> {
        (0..3)
            .map(|a| Vec::<i64>::try_from(&p.get(a)).unwrap())
            .collect()
    }

    #[test]
    fn a_prompt_places_text_video_and_text_as_get_rope_index() {
        // 2 text, a video of 2 temporal patches of 1 × 2, 2 text; step 2.4.
        let v = 9;
        let ids = [1, 2, v, v, v, v, 3, 4];
        let (p, next) = prompt_positions(&ids, v, 2, (1, 2), 2.4, Device::Cpu).unwrap();
        assert_eq!(
            axes(&p),
            vec![
                vec![0, 1, 2, 2, 4, 4, 4, 5],
                vec![0, 1, 2, 2, 2, 2, 4, 5],
                vec![0, 1, 2, 3, 2, 3, 4, 5],
            ]
        );
        assert_eq!(next, 6);
        // A long step runs the temporal axis past the text: generation starts after it.
        let (_, next) = prompt_positions(&ids, v, 2, (1, 2), 50.0, Device::Cpu).unwrap();
        assert_eq!(next, 2 + 50 + 1);
    }

    #[test]
    fn streamed_blocks_continue_where_the_cursor_is() {
        let mut c = Cursor::new(0.4);
        c.next = 2;
        c.end = 2;
        let first = block_positions(&mut c, 1, (1, 2), 2.4, Device::Cpu).unwrap();
        let second = block_positions(&mut c, 1, (1, 2), 2.4, Device::Cpu).unwrap();
        assert_eq!(axes(&first)[0], vec![2, 2]);
        assert_eq!(axes(&second)[0], vec![4, 4]);
        assert_eq!(axes(&second)[2], vec![2, 3]);
        assert_eq!((c.next, c.end, c.blocks, c.video_start), (4, 5, 2, Some(2)));
    }
}
